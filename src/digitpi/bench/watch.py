"""`digitpi bench watch`: frames per second of `digitpi watch` at 640x480, on one core.

The frames are a generated video of real MNIST test digits printed on paper (`realistic.print_digits`),
held in front of the camera by a hand that drifts and shakes, one sheet after another with blank
paper between them. Times are taken per kind of frame (blank paper, one line, two lines) for the
reading alone, and for the whole loop of `digitpi watch --video` (decoding, reading, the steady
filter) over the video written as Motion-JPEG. The process is pinned to one core and onnxruntime
runs one thread. Needs OpenCV (the `[camera]` extra); torch-free, so it runs on the Pi itself.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitpi import UserError, data, watch
from digitpi.bench import cpu_name
from digitpi.bench.realistic import light_across, photograph, print_digits
from digitpi.exportdir import PRECISIONS

SIZE = (640, 480)  # width, height of every frame: what `digitpi watch` asks of a camera
FPS = 10.0  # of the written video: the rate a watch must keep up with
TARGET_FPS = 10.0  # issue 16: at least 10 frames per second at 640x480 on one core


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="an exported model folder (`digitpi export`)")
    parser.add_argument("--precision", choices=PRECISIONS, help="which exported model to run (default: the runtime's)")
    parser.add_argument("--sheets", type=int, default=6, help="sheets of digits shown one after another (default: 6)")
    parser.add_argument("--data-dir", help="folder holding the MNIST IDX files (the digits printed)")


@dataclass(frozen=True)
class Showing:
    shown: int = 16  # frames a sheet is in view
    blank: int = 6  # frames of blank paper after it
    drift: float = 3.0  # px per frame the sheet moves at most, each way
    shake: float = 1.5  # px of random hand shake per frame (standard deviation)


def sheets_of(labels: np.ndarray, count: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """`count` sheets of test digit indices, line by line: one or two lines of 2-5 digits, drawn at random."""
    return [[rng.choice(len(labels), size=int(rng.integers(2, 5, endpoint=True)), replace=False)
             for _ in range(int(rng.integers(1, 2, endpoint=True)))] for _ in range(count)]


def scene(images: np.ndarray, sheets: list[list[np.ndarray]], rng: np.random.Generator,
          showing: Showing = Showing(), size: tuple[int, int] = SIZE) -> Iterator[tuple[np.ndarray, int | None]]:
    """BGR frames (uint8 (H, W, 3)) of each sheet of `images` moving in view, then blank paper; with each
    frame the number of the sheet in view (None for blank paper)."""
    width, height = size
    for number, lines in enumerate(sheets):
        sheet = print_digits([images[line] for line in lines], int(rng.integers(60, 90)), rng)
        light = light_across(size, rng)
        h, w = sheet.ink.shape
        spare = np.array([width - w, height - h]) - 2 * showing.shown * showing.drift
        if (spare < 0).any():
            raise UserError(f"a sheet of {w}x{h} px does not fit a {width}x{height} frame as it moves")
        start = rng.uniform(0.2, 0.8, 2) * spare + showing.shown * showing.drift
        velocity = rng.uniform(-showing.drift, showing.drift, 2)
        for t in range(showing.shown):
            x, y = np.round(start + t * velocity + rng.normal(0, showing.shake, 2)).astype(int)
            yield photograph(sheet, size, (int(x), int(y)), rng, light)[0][:, :, ::-1], number
        for _ in range(showing.blank):
            yield photograph(None, size, (0, 0), rng, light)[0][:, :, ::-1], None


def write_video(path: Path, frames, fps: float = FPS, quality: int = 90) -> int:
    """Write BGR frames as a Motion-JPEG AVI (OpenCV's own encoder: no codec to install); the frame count."""
    cv2 = watch.opencv()
    writer = None
    count = 0
    try:
        for pixels in frames:
            if writer is None:
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                         (pixels.shape[1], pixels.shape[0]))
                writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
            writer.write(np.ascontiguousarray(pixels))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def one_core() -> str:
    """Pin this process to one CPU (Linux), so the frame rate is what one core gives; says which."""
    if not hasattr(os, "sched_setaffinity"):
        return "all cores (no sched_setaffinity here)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"core {core}"


def run(args: argparse.Namespace) -> None:
    if args.sheets < 1:
        raise UserError("--sheets must be at least 1")
    from digitpi.runtime import Classifier

    core = one_core()
    cv2 = watch.opencv()
    cv2.setNumThreads(1)
    classifier = Classifier.load(args.model, precision=args.precision)
    images, labels = data.load_split("mnist", "test", args.data_dir)
    rng = np.random.default_rng(16)
    sheets = sheets_of(labels, args.sheets, rng)
    frames = list(scene(images, sheets, rng))
    watch.read_frame(classifier, frames[0][0])  # warm-up: imports, Pillow plugins, onnxruntime's first run

    kinds: dict[str, list[float]] = {"blank paper": [], "one line": [], "two lines": []}
    for pixels, number in frames:
        kind = "blank paper" if number is None else ("one line" if len(sheets[number]) == 1 else "two lines")
        start = time.perf_counter()
        watch.read_frame(classifier, pixels)
        kinds[kind].append(time.perf_counter() - start)
    rows = [{"frames": name, "count": len(times), "median_ms": round(1000 * float(np.median(times)), 2),
             "p90_ms": round(1000 * float(np.percentile(times, 90)), 2), "fps": round(1 / float(np.mean(times)), 1)}
            for name, times in kinds.items() if times]

    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "sheets.avi"
        write_video(video, (pixels for pixels, _ in frames))
        capture = watch.open_video(video)
        start = time.perf_counter()
        said = list(watch.changes(classifier, watch.video_frames(capture)))
        loop_s = time.perf_counter() - start
        capture.release()
    expected = ["\n".join("".join(str(labels[i]) for i in line) for line in lines) for lines in sheets]
    read = [sight.text for sight in said if sight.text]
    report = {"machine": cpu_name(), "pinned_to": core, "frame_size": list(SIZE), "model": classifier.card.get("model"),
              "runs_on": f"{classifier.precision} on {classifier.backend_name}", "rows": rows,
              "video": {"frames": len(frames), "seconds": round(loop_s, 2), "fps": round(len(frames) / loop_s, 1),
                        "sheets": len(sheets), "sheets_read_exactly": sum(r == e for r, e in zip(read, expected)),
                        "changes_said": len(said)},
              "target_fps": TARGET_FPS}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['machine']}, pinned to {core}; {report['model']} {report['runs_on']}; frames {SIZE[0]}x{SIZE[1]}\n")
    print("| frames | count | read, median ms | p90 ms | frames/s |\n| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['frames']} | {r['count']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['fps']:.1f} |")
    v = report["video"]
    print(f"\ndigitpi watch --video (decode + read + steady filter): {v['frames']} frames in {v['seconds']:.2f} s, "
          f"{v['fps']:.1f} frames/s (target: {TARGET_FPS:.0f}); {v['sheets_read_exactly']} of {v['sheets']} sheets "
          f"read exactly, {v['changes_said']} changes said (sheets and blank paper).")
