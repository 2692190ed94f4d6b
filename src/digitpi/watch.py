"""`digitpi watch`: read the digits a camera (or a video) sees, and say so when what it reads changes.

Each frame is read as a page (`reading.read(..., page=True)`, the pipeline of `digitpi predict --multi`).
A frame without a digit is "nothing in view", not an error. Frames of a moving hand are blurred and
read differently from one frame to the next, so a reading is passed on only once it has been the
same for a few frames in a row (`Steady`), and only when it differs from the last one passed on.

OpenCV (the `[camera]` extra) decodes videos and talks to cameras; it is imported only when a source
is opened, so everything else here works, and is tested, without a camera or OpenCV.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitpi import UserError, preprocess, reading

STEADY_FRAMES = 3  # a reading is said once this many frames in a row read the same (0.3 s at 10 frames/s)
CAMERA_SIZE = (640, 480)  # px asked of a camera: enough for a sheet of digits, cheap to read at 10 frames/s
CAMERA_PATIENCE = 50  # failed reads in a row after which a camera counts as gone (a few seconds of none)
NOTHING = ""  # the text of a frame with no digit in view


@dataclass(frozen=True)
class Frame:
    index: int  # the frame's number in its source, from 0 (frames skipped by --every count too)
    seconds: float  # its time: the video's clock, or the wall clock since a camera was opened
    pixels: np.ndarray  # uint8 (H, W, 3), blue-green-red as OpenCV delivers it


@dataclass(frozen=True)
class Sight:
    """What one frame showed."""

    index: int
    seconds: float
    page: reading.Page | None  # None: no digit in view

    @property
    def text(self) -> str:
        return self.page.text if self.page is not None else NOTHING


def read_frame(classifier, pixels: np.ndarray) -> reading.Page | None:
    """The digits of an OpenCV frame (BGR), line by line, or None when none is in view."""
    try:
        return reading.read(classifier, np.ascontiguousarray(pixels[:, :, ::-1]), page=True)
    except preprocess.NoDigitError:
        return None


class Steady:
    """Passes a sight on once its text has been the same for `frames` sights in a row and differs from
    the last text passed on. At the start nothing is in view, so a blank view is said only after a reading."""

    def __init__(self, frames: int = STEADY_FRAMES) -> None:
        if frames < 1:
            raise ValueError(f"a reading must stay for at least 1 frame, got {frames}")
        self.frames = frames
        self.said = NOTHING
        self.text: str | None = None  # the text of the current run of equal sights
        self.run = 0

    def update(self, sight: Sight) -> Sight | None:
        if sight.text == self.text:
            self.run += 1
        else:
            self.text, self.run = sight.text, 1
        if self.run >= self.frames and sight.text != self.said:
            self.said = sight.text
            return sight
        return None


def changes(classifier, frames: Iterable[Frame], steady: int = STEADY_FRAMES) -> Iterator[Sight]:
    """Read every frame; yield a sight each time the steady reading changes."""
    steadiness = Steady(steady)
    for frame in frames:
        said = steadiness.update(Sight(frame.index, frame.seconds, read_frame(classifier, frame.pixels)))
        if said is not None:
            yield said


# ---------------------------------------------------------------- what is printed


def record(sight: Sight) -> dict:
    """A change as `digitpi watch --json` prints it, one JSON object per line."""
    lines = sight.page.lines if sight.page is not None else []
    return {"frame": sight.index, "seconds": round(sight.seconds, 3), "text": sight.text,
            "lines": [{"text": reading.line_text(line),
                       "digits": [{"digit": int(d.label) if d.label.isdigit() else d.label,
                                   "probability": round(d.probability, 6), "box": list(d.box)} for d in line]}
                      for line in lines]}


def describe(sight: Sight) -> str:
    """A change as a person reads it: `12.40 s: 12345 / 678 (96.1 %)`, or `... nothing in view`."""
    if sight.page is None:
        return f"{sight.seconds:.2f} s: nothing in view"
    probability = reading.line_probability(sight.page.digits)
    return f"{sight.seconds:.2f} s: {' / '.join(sight.text.splitlines())} ({100 * probability:.1f} %)"


# ---------------------------------------------------------------- cameras and videos (OpenCV)


def opencv():
    """The cv2 module, quiet (its warnings would break our one-line errors), or a UserError saying how to get it."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError:
        raise UserError("digitpi watch needs OpenCV: pip install 'digitpi[camera]'") from None
    return cv2


def open_video(path: str | Path):
    """A cv2.VideoCapture of a video file; a missing or unreadable file is a UserError."""
    cv2 = opencv()
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened() or not capture.grab():
        capture.release()
        raise UserError(f"{path}: not a video OpenCV can read")
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # back to the frame grab() took
    return capture


def open_camera(index: int, size: tuple[int, int] = CAMERA_SIZE):
    """A cv2.VideoCapture of camera `index` (/dev/video<index> on Linux), asked for `size` and for the
    newest frame rather than a queue of old ones; a camera that is missing or busy is a UserError."""
    cv2 = opencv()
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        raise UserError(f"cannot open camera {index} (is it plugged in, and not used by another program?)")
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


def video_frames(capture, every: int = 1) -> Iterator[Frame]:
    """Every `every`th frame of a video until its end, timed by the video's own clock."""
    fps = capture.get(opencv().CAP_PROP_FPS)
    index = -1
    while capture.grab():  # grab() alone skips the colour conversion of frames that are not read
        index += 1
        if index % every:
            continue
        ok, pixels = capture.retrieve()
        if ok:
            yield Frame(index, index / fps if fps > 0 else 0.0, pixels)


def camera_frames(capture, every: int = 1, patience: int = CAMERA_PATIENCE) -> Iterator[Frame]:
    """Every `every`th frame of a camera, for ever, timed from the first; a camera that stops sending
    frames (unplugged) is a UserError."""
    start, index, failures = time.monotonic(), -1, 0
    while True:
        if not capture.grab():
            failures += 1
            if failures >= patience:
                raise UserError("the camera stopped sending frames (unplugged?)")
            time.sleep(0.05)
            continue
        failures = 0
        index += 1
        if index % every:
            continue
        ok, pixels = capture.retrieve()
        if ok:
            yield Frame(index, time.monotonic() - start, pixels)
