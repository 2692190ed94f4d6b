"""`digitpi bench preprocess`: how long a picture takes to become the model's 28x28 input.

The pictures are real MNIST test digits printed as dark ink on paper, at the sizes a Pi meets: a
12-megapixel phone photo (JPEG), the same page as a lossless scan (PNG, which cannot be decoded at
reduced scale), a thin pen's drawing on a large canvas (its strokes thickened), the 140 px drawing
the web page sends, a plain 28x28 MNIST array, and a 12-MP photo of a page of 12 digits in two
lines (`layout.read_page`: every digit's 28x28 and box). Each time runs from encoded bytes
(decoding included) in this process, on one thread. Torch-free: it runs on the Pi itself.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image

from digitpi import UserError, data, layout, preprocess
from digitpi.bench.realistic import pen_line

TARGET_MS = {"photo": 10.0, "page": 40.0}  # issue 12: a 12-MP photo, a page of 12 digits, on this machine
PAGE = "page of 12 digits in 2 lines, JPEG 4000x3000 (12 MP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per picture (default: 20)")
    parser.add_argument("--data-dir", help="folder holding the MNIST IDX files (the digits printed)")


def on_paper(digit: np.ndarray, size: tuple[int, int], digit_side: int, gradient: float = 0.0) -> np.ndarray:
    """A grey page (height, width) with `digit` printed dark, `digit_side` px tall, a third of the way in."""
    height, width = size
    paper = np.full(size, 215.0) * (1 - gradient * np.linspace(0, 1, width))[None, :]
    ink = np.asarray(Image.fromarray(digit).resize((digit_side, digit_side), Image.BICUBIC), dtype=np.float64) / 255
    top, left = height // 3, width // 3
    patch = paper[top:top + digit_side, left:left + digit_side]
    paper[top:top + digit_side, left:left + digit_side] = patch * (1 - 0.8 * ink)
    return paper.clip(0, 255).astype(np.uint8)


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def page_of(digits: np.ndarray, size: tuple[int, int] = (3000, 4000), side: int = 400) -> np.ndarray:
    """A grey page (height, width) with `digits` printed dark, `side` px tall, in two lines."""
    paper = np.full(size, 215.0)
    per_line = -(-len(digits) // 2)
    for k, digit in enumerate(digits):
        ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.BICUBIC), dtype=np.float64) / 255
        top, left = 700 + (k // per_line) * (side + 500), 300 + (k % per_line) * (side + 150)
        paper[top:top + side, left:left + side] *= 1 - 0.8 * ink
    return paper.clip(0, 255).astype(np.uint8)


def pictures(digits: np.ndarray) -> dict[str, bytes | np.ndarray]:
    """Each picture the benchmark times; all but the page hold `digits[0]`, the page holds 12 of them."""
    digit = digits[0]
    photo = on_paper(digit, (3000, 4000), 1200, gradient=0.3)
    pen = 255 - pen_line(np.asarray(Image.fromarray(digit).resize((1000, 1000), Image.BICUBIC)), pen=2)
    drawn = np.asarray(Image.fromarray(digit).resize((140, 140), Image.BICUBIC))
    canvas = np.dstack([drawn, drawn, drawn, np.full_like(drawn, 255)])  # the page: white ink on opaque black
    return {
        "phone photo, JPEG 4000x3000 (12 MP)": encoded(photo, "JPEG", quality=90),
        "scan, PNG 4000x3000 (12 MP)": encoded(photo, "PNG"),
        "thin pen on a canvas, PNG 1200x1200": encoded(np.pad(pen, 100, constant_values=255), "PNG"),
        "web page drawing, PNG 140x140 RGBA": encoded(canvas, "PNG"),
        "MNIST array, 28x28 uint8": digit,
        PAGE: encoded(page_of(digits[:12]), "JPEG", quality=90),
    }


def time_picture(read, picture: bytes | np.ndarray, repeats: int) -> list[float]:
    read(picture)  # warm-up: imports, Pillow plugins, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read(picture)
        times.append(1000 * (time.perf_counter() - start))
    return times


def run(args: argparse.Namespace) -> None:
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    images, _ = data.load_split("mnist", "test", args.data_dir)
    rows = []
    for name, picture in pictures(images[:12]).items():
        times = time_picture(layout.read_page if name == PAGE else preprocess.to_mnist, picture, args.repeats)
        size = picture.nbytes if isinstance(picture, np.ndarray) else len(picture)
        rows.append({"picture": name, "bytes": size, "median_ms": round(float(np.median(times)), 2),
                     "p90_ms": round(float(np.percentile(times, 90)), 2)})
    if args.json:
        print(json.dumps({"repeats": args.repeats, "target_ms": TARGET_MS, "rows": rows}, indent=2))
        return
    print("| picture | file KB | to 28x28 (each digit), median ms | p90 ms |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['picture']} | {r['bytes'] / 1024:,.1f} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} |")
    print(f"\n{args.repeats} calls per picture (preprocess.to_mnist; the page: layout.read_page), from encoded "
          f"bytes, one thread; targets: 12-MP photo {TARGET_MS['photo']:.0f} ms, page {TARGET_MS['page']:.0f} ms.")
