"""`digitpi watch`: a generated video of real MNIST test digits printed on paper, moving in front of the
camera with blank paper between the sheets, read by the real command (a subprocess) with a trained model.

The camera path is the same loop fed by a cv2.VideoCapture of a camera; without a camera here, the
tests open a missing one (a clear error) and feed the camera loop a video that ends (an unplugged camera).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2", reason="digitpi watch needs the [camera] extra (OpenCV)")

from digitpi import UserError, reading, watch  # noqa: E402
from digitpi.bench.watch import Showing, scene, sheets_of, write_video  # noqa: E402

SHOWING = Showing()  # each sheet 16 frames in view, then 6 frames of blank paper


def digitpi(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digitpi", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


@dataclass(frozen=True)
class Video:
    path: Path  # the AVI (Motion-JPEG, 10 frames/s, 640x480)
    truth: list[str]  # each sheet's digits as written, lines split by newlines
    stills: list[np.ndarray]  # each sheet as the camera saw it mid-way, before the video's compression
    in_view: list[range]  # the frames each sheet is in view


@pytest.fixture(scope="module")
def video(mnist_test, tmp_path_factory) -> Video:
    """An AVI of 4 sheets (one or two lines of 2-5 test digits each) moving in view, blank paper between them."""
    images, labels = mnist_test
    rng = np.random.default_rng(1600)
    sheets = sheets_of(labels, 4, rng)
    frames = list(scene(images, sheets, rng, SHOWING))
    path = tmp_path_factory.mktemp("video") / "sheets.avi"
    assert write_video(path, (pixels for pixels, _ in frames)) == len(frames) == 4 * 22
    period = SHOWING.shown + SHOWING.blank
    return Video(path, ["\n".join("".join(str(labels[i]) for i in line) for line in lines) for lines in sheets],
                 [frames[n * period + SHOWING.shown // 2][0] for n in range(len(sheets))],
                 [range(n * period, n * period + SHOWING.shown) for n in range(len(sheets))])


def test_watch_reads_each_sheet_once_in_order(video, fast_export):
    """What watch says of each moving sheet is what the same model reads in a still of it (how well a
    model reads is `digitpi bench watch`'s and `bench wild`'s to measure), and that is what was written."""
    from digitpi.runtime import Classifier

    classifier = Classifier.load(fast_export)
    stills = [reading.read(classifier, still[:, :, ::-1], page=True).text for still in video.stills]
    done = digitpi("watch", "--video", str(video.path), "--model", str(fast_export), "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    said = [json.loads(line) for line in done.stdout.splitlines()]
    # each sheet once, then the blank paper after it: in order, nothing twice, nothing made up
    assert [s["text"] for s in said] == [text for still in stills for text in (still, "")]
    for sheet, shown in zip(said[::2], video.in_view):
        assert sheet["frame"] in shown[watch.STEADY_FRAMES - 1:]  # said once steady, while still in view
        assert sheet["seconds"] == pytest.approx(sheet["frame"] / 10)  # the video's own clock (10 frames/s)
        assert [line["text"] for line in sheet["lines"]] == sheet["text"].splitlines()
        for line in sheet["lines"]:
            assert [str(d["digit"]) for d in line["digits"]] == list(line["text"])
            for d in line["digits"]:
                left, top, right, bottom = d["box"]
                assert 0 <= left < right <= 640 and 0 <= top < bottom <= 480 and 0 < d["probability"] <= 1
    assert all(blank["lines"] == [] for blank in said[1::2])
    # the layout is the sheet's (lines, digits per line), and nearly every digit is read right
    read, truth = "\n".join(stills), "\n".join(video.truth)
    assert [len(line) for line in read.splitlines()] == [len(line) for line in truth.splitlines()]
    assert sum(a == b for a, b in zip(read, truth)) >= 0.9 * len(truth)


def test_watch_every_other_frame_prints_for_people(video, fast_export):
    done = digitpi("watch", "--video", str(video.path), "--model", str(fast_export), "--every", "2")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    shown = [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in lines[::2]]  # "12.40 s: 123 / 45 (96.1 %)"
    assert [len(text) for text in shown] == [len(text.replace("\n", " / ")) for text in video.truth]
    assert all(line.endswith(" s: nothing in view") for line in lines[1::2]) and len(lines) == 2 * len(video.truth)


def test_ctrl_c_stops_watch_cleanly(video, fast_export):
    process = subprocess.Popen([sys.executable, "-m", "digitpi", "watch", "--video", str(video.path), "--model",
                                str(fast_export), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()  # the first sheet is read: the loop is running
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 0 and errors == ""
    assert json.loads(first)["text"] and all(json.loads(line) for line in rest.splitlines())


def test_a_reader_that_stops_reading_stops_watch_quietly(video, fast_export):
    """`digitpi watch --json | head -1`: the pipe closes after the first line."""
    process = subprocess.Popen([sys.executable, "-m", "digitpi", "watch", "--video", str(video.path), "--model",
                                str(fast_export), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(process.stdout.readline())["text"]
    process.stdout.close()
    assert process.wait(timeout=60) == 0 and process.stderr.read() == ""
    process.stderr.close()


@pytest.mark.parametrize("args,message", [
    (["--video", "missing.avi"], "missing.avi: no such file"),
    (["--video", "notes.avi"], "notes.avi: not a video OpenCV can read"),
    (["--camera", "57"], "cannot open camera 57 (is it plugged in, and not used by another program?)"),
    (["--video", "missing.avi", "--every", "0"], "--every must be at least 1, got 0"),
    (["--video", "missing.avi", "--steady", "0"], "--steady must be at least 1, got 0"),
])
def test_a_bad_source_is_one_line_before_the_model_loads(args, message, tmp_path):
    (tmp_path / "notes.avi").write_text("a shopping list, not a video\n")
    done = digitpi("watch", *args, "--model", "no-such-model", timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"digitpi: error: {message}\n"


def test_without_opencv_watch_says_how_to_get_it():
    script = "import sys; sys.modules['cv2'] = None; from digitpi import cli; sys.exit(cli.main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, "watch", "--camera", "0", "--model", "m"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "digitpi: error: digitpi watch needs OpenCV: pip install 'digitpi[camera]'\n"


def test_a_camera_that_stops_sending_is_an_error(video):
    """The camera loop fed a real capture whose frames run out, as an unplugged camera's do."""
    capture = watch.open_video(video.path)
    frames = watch.camera_frames(capture, every=4, patience=3)
    try:
        seen = [next(frames) for _ in range(22)]  # 88 frames, one in 4
        assert [f.index for f in seen] == list(range(0, 88, 4)) and seen[0].pixels.shape == (480, 640, 3)
        assert all(a.seconds <= b.seconds for a, b in zip(seen, seen[1:]))  # the wall clock
        with pytest.raises(UserError, match="stopped sending frames"):
            next(frames)
    finally:
        capture.release()


# ---------------------------------------------------------------- the steady filter alone


def page_of(text: str) -> reading.Page:
    """A page reading `text` (lines split by newlines), each digit sure."""
    def digit(label: str) -> reading.Digit:
        probabilities = np.eye(10, dtype=np.float32)[int(label)]
        return reading.Digit(int(label), probabilities, np.zeros((28, 28), np.uint8), (0, 0, 1, 1), tuple("0123456789"))
    return reading.Page([[digit(c) for c in line] for line in text.splitlines()])


def said(texts: list[str], frames: int = 3) -> list[tuple[int, str]]:
    steady = watch.Steady(frames)
    sights = [watch.Sight(i, i / 10, page_of(t) if t else None) for i, t in enumerate(texts)]
    return [(s.index, s.text) for s in sights if steady.update(s) is not None]


def test_steady_says_a_reading_once_it_holds():
    # blank at the start is not news; a flicker (a blurred 12 read as 17) is not said; a reading held is
    # said once; blank paper after it is said; the same sheet shown again is said again
    texts = ["", "", "", "12", "17", "12", "12", "12", "12", "12", "", "", "", "", "12", "12", "12"]
    assert said(texts) == [(7, "12"), (12, ""), (16, "12")]
    assert said(["3", "4", "3", "4"], frames=1) == [(0, "3"), (1, "4"), (2, "3"), (3, "4")]
    assert said(["5\n6"] * 5, frames=5) == [(4, "5\n6")]
    with pytest.raises(ValueError):
        watch.Steady(0)


def test_describe_and_record():
    sight = watch.Sight(42, 4.2, page_of("12\n345"))
    assert watch.describe(sight) == "4.20 s: 12 / 345 (100.0 %)"
    assert watch.describe(watch.Sight(50, 5.0, None)) == "5.00 s: nothing in view"
    record = watch.record(sight)
    assert record["frame"] == 42 and record["seconds"] == 4.2 and record["text"] == "12\n345"
    assert [line["text"] for line in record["lines"]] == ["12", "345"]
    assert record["lines"][1]["digits"][0] == {"digit": 3, "probability": 1.0, "box": [0, 0, 1, 1]}
