"""Real MNIST test digits made to look like photos and scans of handwriting (numpy + Pillow; the thin
pen also scikit-image).

Each digit is printed as dark ink on paper: scaled up to a couple of hundred pixels (or redrawn
with a thin pen at a larger size), placed off-centre with wide margins, slightly rotated, on grey
or unevenly lit paper (a gradient and a soft shadow edge), with sensor noise, then JPEG-compressed.
The preprocessing has to undo all of it to get back an MNIST-framed 28x28 image. `variant_accuracy`
and `read_rows` measure that, for the tests' thresholds and for benchmarks/preprocess_accuracy.py
(the README's numbers) alike.
Measurement code, not a benchmark command: `digitpi bench` lists only the modules in BENCHMARKS.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from digitpi import layout, preprocess


@dataclass(frozen=True)
class Variant:
    canvas: tuple[int, int] = (384, 320)  # width, height of every picture, px
    scale: tuple[float, float] = (6.0, 9.0)  # the 28x28 digit is enlarged by a factor in this range
    rotate: float = 0.0  # max rotation, degrees either way
    paper: tuple[float, float] = (225.0, 250.0)  # grey level of the paper
    ink: tuple[float, float] = (0.1, 0.3)  # ink brightness as a fraction of the paper's
    gradient: float = 0.0  # max fall of the light across the picture, fraction of the paper level
    shadow: float = 0.0  # max darkening by a soft-edged shadow, fraction
    noise: float = 2.0  # sensor noise, grey levels (standard deviation)
    quality: tuple[int, int] = (85, 95)  # JPEG quality range
    pen: tuple[int, int] = (0, 0)  # redraw the digit's centre line with a pen this many px wide (0: as printed)


VARIANTS = {
    # A flatbed scan: white paper, black ink, straight, light compression.
    "scan": Variant(),
    # A phone photo: grey paper, faint ink, tilted, noisy, stronger compression.
    "photo": Variant(scale=(5.0, 9.0), rotate=8.0, paper=(140.0, 200.0), ink=(0.2, 0.5), noise=5.0,
                     quality=(60, 85)),
    # A thin pen on a large canvas or page: the digit's centre line, 1-2 px wide, 10-16x enlarged.
    "thin pen": Variant(canvas=(512, 512), scale=(10.0, 16.0), pen=(1, 2)),
    # Uneven light: a gradient across the page and a shadow edge, tilted, compressed.
    "shadow": Variant(rotate=5.0, paper=(170.0, 240.0), ink=(0.1, 0.4), gradient=0.4, shadow=0.4,
                      noise=4.0, quality=(65, 90)),
}


def render(digits: np.ndarray, variant: Variant, rng: np.random.Generator) -> Iterator[bytes]:
    """JPEG bytes of each white-on-black uint8 image in `digits` (N, h, w) printed as `variant` says."""
    width, height = variant.canvas
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    grain = rng.standard_normal((2 * height, 2 * width), dtype=np.float32)  # noise bank: a random window per picture
    for digit in digits:
        scale = rng.uniform(*variant.scale)
        angle = rng.uniform(-variant.rotate, variant.rotate)
        h, w = digit.shape
        big = Image.fromarray(digit).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        if variant.pen[1]:
            big = Image.fromarray(pen_line(np.asarray(big), int(rng.integers(*variant.pen, endpoint=True))))
        if angle:
            big = big.rotate(angle, resample=Image.BILINEAR, expand=True)
        big = np.asarray(big, dtype=np.float32)[:height, :width] / 255
        top = rng.integers(0, height - big.shape[0], endpoint=True)  # off-centre, anywhere it fits
        left = rng.integers(0, width - big.shape[1], endpoint=True)
        alpha = np.zeros((height, width), dtype=np.float32)
        alpha[top:top + big.shape[0], left:left + big.shape[1]] = big
        light = np.float32(rng.uniform(*variant.paper)) * lighting(xs, ys, variant, rng)
        ink = np.float32(rng.uniform(*variant.ink))
        dy, dx = rng.integers(0, height), rng.integers(0, width)
        pixels = light * (1 - alpha * (1 - ink)) + variant.noise * grain[dy:dy + height, dx:dx + width]
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(
            buffer, format="JPEG", quality=int(rng.integers(*variant.quality, endpoint=True)))
        yield buffer.getvalue()


def pen_line(big: np.ndarray, pen: int) -> np.ndarray:
    """uint8 white on black: the centre line (skeleton) of the ink in `big`, redrawn `pen` (1 or 2) px wide."""
    from skimage.morphology import skeletonize  # the PC side only: scikit-image comes with the test extra

    ink = big > 127
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    line = np.zeros_like(ink)
    if len(rows):  # the ink's box and a 1-px margin: the same skeleton, 2.6x sooner than the whole picture
        box = np.s_[max(rows[0] - 1, 0):rows[-1] + 2, max(cols[0] - 1, 0):cols[-1] + 2]
        line[box] = skeletonize(ink[box])
    if pen > 1:
        line = line | np.roll(line, 1, 0) | np.roll(line, 1, 1) | np.roll(line, (1, 1), (0, 1))
    return line.astype(np.uint8) * 255


def lighting(xs: np.ndarray, ys: np.ndarray, variant: Variant, rng: np.random.Generator) -> np.ndarray:
    """(H, W) factor <= 1: a linear fall of light in a random direction times a soft shadow edge."""
    height, width = xs.shape
    factor = np.ones_like(xs)
    if variant.gradient:
        theta = rng.uniform(0, 2 * np.pi)
        along = (np.cos(theta) * xs / width + np.sin(theta) * ys / height)
        along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
        factor *= np.float32(1 - rng.uniform(0, variant.gradient) * along)
    if variant.shadow:
        theta = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-0.3, 0.3) * width
        distance = np.cos(theta) * (xs - width / 2) + np.sin(theta) * (ys - height / 2) - offset
        softness = rng.uniform(0.05, 0.2) * width  # px: the penumbra of a hand or phone, not a knife edge
        factor *= 1 - np.float32(rng.uniform(0, variant.shadow)) / (1 + np.exp(distance * np.float32(-1 / softness)))
    return factor


# Continental handwriting: MNIST's 1s and 7s as many European hands write them. Drawn here with a pen
# by Pillow at 4x, not by the training augmentation (`train.continental`), then printed as scans.
CONTINENTAL_ZOOM = 4  # the digits are drawn 112 px tall; CONTINENTAL_LOOK prints them 6-9x MNIST's size
CONTINENTAL_LOOK = Variant(scale=(1.5, 2.25))


def continental(digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White-on-black uint8 (N, 112, 112): each 1 of `digits` (N, 28, 28) given a flag from its top
    down to the left (35-55 % of its height, 25-50 degrees below the horizontal) and each 7 a bar
    across its stem at mid-height; other digits enlarged as they are. Pens 2-2.5 MNIST px wide."""
    out = []
    for digit, label in zip(digits, labels):
        big = Image.fromarray(digit).resize((28 * CONTINENTAL_ZOOM,) * 2, Image.BICUBIC)
        ink = np.asarray(big) > 127
        rows = np.flatnonzero(ink.any(1))
        if label in (1, 7) and len(rows):
            pen = round(rng.uniform(2.0, 2.5) * CONTINENTAL_ZOOM)
            top, height = rows[0], rows[-1] - rows[0] + 1
            draw = ImageDraw.Draw(big)
            if label == 1:
                x0 = float(np.flatnonzero(ink[top + pen // 2]).mean()) if ink[top + pen // 2].any() else 0.0
                length, angle = rng.uniform(0.35, 0.55) * height, np.radians(rng.uniform(25, 50))
                start = (x0, top + pen / 2)
                end = (x0 - length * np.cos(angle), top + pen / 2 + length * np.sin(angle))
            else:
                y = top + round(rng.uniform(0.45, 0.6) * height)
                x0 = float(np.flatnonzero(ink[y]).mean()) if ink[y].any() else 0.0
                length = rng.uniform(0.35, 0.5) * height
                start, end = (x0 - length / 2, y), (x0 + length / 2, y)
            draw.line([start, end], fill=255, width=pen)
            for x, y in (start, end):  # round ends, as a pen leaves them
                draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
        out.append(np.asarray(big))
    return np.stack(out)


def row_of(digits: np.ndarray, rng: np.random.Generator, gap: tuple[int, int] = (-2, 6)) -> np.ndarray:
    """MNIST digits (n, 28, 28) side by side as one white-on-black strip: each cropped to its ink
    columns, `gap` px apart (a negative gap lets boxes overlap, as slanted handwriting does)."""
    pieces = []
    for digit in digits:
        cols = np.flatnonzero(digit.max(0))
        pieces.append(digit[:, cols[0]:cols[-1] + 1])
    gaps = rng.integers(gap[0], gap[1], size=len(pieces), endpoint=True)
    width = 8 + sum(p.shape[1] for p in pieces) + int(gaps[1:].sum()) + 8
    strip = np.zeros((28, max(width, 28)), dtype=np.uint8)
    x = 8
    for i, piece in enumerate(pieces):
        x += int(gaps[i]) if i else 0
        region = strip[:, x:x + piece.shape[1]]
        np.maximum(region, piece, out=region)
        x += piece.shape[1]
    return strip


# ---------------------------------------------------------------- pages of several lines, photographed in colour

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), px


@dataclass(frozen=True)
class Sheet:
    """Digits printed line by line: their ink, and where each digit's ink is on the sheet."""

    ink: np.ndarray  # float32 (H, W) in [0, 1]: how much ink covers each pixel
    boxes: list[list[Box]] = field(default_factory=list)  # each digit's ink, line by line, in the sheet's px


def print_digits(lines: list[np.ndarray], height: int, rng: np.random.Generator,
                 gap: tuple[float, float] = (0.2, 0.45), line_gap: float = 0.6) -> Sheet:
    """MNIST digits (each line an array (n, 28, 28)) printed about `height` px tall (their ink, not the
    28x28 frame), `gap` digit heights apart within a line and `line_gap` between lines."""
    scale = height / 20  # MNIST's ink fills 20 of the 28 px
    lines_ink = [[scaled_ink(digit, scale) for digit in digits] for digits in lines]
    width = max(sum(ink.shape[1] for ink in line) + round(gap[1] * height) * (len(line) - 1) for line in lines_ink)
    tall = [max(ink.shape[0] for ink in line) for line in lines_ink]
    sheet = np.zeros((sum(tall) + round(line_gap * height) * (len(tall) - 1), width), np.float32)
    boxes, top = [], 0
    for line, line_height in zip(lines_ink, tall):
        boxes.append([])
        left = 0
        for ink in line:
            h, w = ink.shape
            y = top + (line_height - h) // 2
            np.maximum(sheet[y:y + h, left:left + w], ink, out=sheet[y:y + h, left:left + w])
            ys, xs = np.nonzero(ink > 0.5)
            boxes[-1].append((left + int(xs.min()), y + int(ys.min()), left + int(xs.max()) + 1, y + int(ys.max()) + 1))
            left += w + round(rng.uniform(*gap) * height)
        top += line_height + round(line_gap * height)
    return Sheet(sheet, boxes)


def scaled_ink(digit: np.ndarray, scale: float) -> np.ndarray:
    """float32 ink coverage in [0, 1] of an MNIST digit cropped to its ink and enlarged `scale` times."""
    rows, cols = np.flatnonzero(digit.max(1)), np.flatnonzero(digit.max(0))
    crop = Image.fromarray(digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    return np.clip(np.asarray(crop.resize(size, Image.BICUBIC), dtype=np.float32) / 255, 0, 1)


PAPER = (226.0, 218.0, 204.0)  # RGB of white paper under warm indoor light
PEN = (38.0, 46.0, 92.0)  # RGB of a dark blue ballpoint


def photograph(sheet: Sheet | None, size: tuple[int, int], at: tuple[int, int], rng: np.random.Generator,
               light: np.ndarray | None = None, noise: float = 3.0) -> tuple[np.ndarray, list[list[Box]]]:
    """An RGB uint8 picture `size` (width, height) of paper with `sheet` on it, its top left corner
    `at` (x, y); `light` (H, W) dims the paper (`lighting`); and the digits' boxes in the picture.
    Without a sheet: blank paper, as a camera sees between two pages."""
    width, height = size
    coverage = np.zeros((height, width), np.float32)
    boxes: list[list[Box]] = []
    if sheet is not None:
        x, y = at
        h, w = sheet.ink.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        coverage[y0:y1, x0:x1] = sheet.ink[y0 - y:y1 - y, x0 - x:x1 - x]
        boxes = [[(left + x, top + y, right + x, bottom + y) for left, top, right, bottom in line]
                 for line in sheet.boxes]
    factor = np.ones((height, width), np.float32) if light is None else light
    pixels = np.empty((height, width, 3), np.float32)
    for channel, (paper, pen) in enumerate(zip(PAPER, PEN)):
        pixels[..., channel] = paper * factor + (pen - paper * factor) * coverage
    pixels += rng.normal(0, noise, (height, width, 1)).astype(np.float32)  # sensor noise, the same in each channel
    return np.clip(pixels, 0, 255).astype(np.uint8), boxes


def light_across(size: tuple[int, int], rng: np.random.Generator, gradient: float = 0.3,
                 shadow: float = 0.2) -> np.ndarray:
    """(height, width) factor <= 1 for `photograph`: light falling across the page and a soft shadow."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return lighting(xs, ys, Variant(gradient=gradient, shadow=shadow), rng)


# ---------------------------------------------------------------- measuring a classifier on them

BATCH = 500  # pictures generated, preprocessed and classified at a time: bounded memory
ROW = Variant(canvas=(1152, 320), scale=(4.0, 6.0), rotate=3.0, paper=(160.0, 240.0), ink=(0.1, 0.4),
              gradient=0.3, shadow=0.3, noise=4.0, quality=(70, 90))  # a written row of digits


def variant_accuracy(classifier, images: np.ndarray, labels: np.ndarray, variant: Variant,
                     rng: np.random.Generator) -> tuple[float, int]:
    """(accuracy, pictures where no digit was found) of preprocess + `classifier` over every image as `variant`."""
    correct = unread = 0
    for first in range(0, len(images), BATCH):
        batch = []
        for picture in render(images[first:first + BATCH], variant, rng):
            try:
                batch.append(preprocess.to_mnist(picture))
            except preprocess.NoDigitError:
                batch.append(np.zeros((28, 28), dtype=np.uint8))  # counts as an error
                unread += 1
        correct += int((classifier.predict(np.stack(batch)).labels == labels[first:first + BATCH]).sum())
    return correct / len(images), unread


def read_rows(classifier, images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> dict:
    """`count` rows of 2-6 test digits, 1-8 px apart at 28-px scale (written apart, not touching), split
    and read left to right. Counts of rows: split into the right number of digits, read exactly, read
    as the model reads the clean digits; of digits: right, in all; and the share of rows the model
    gets right when clean (`ceiling`, what preprocessing at best can keep)."""
    clean = classifier.predict(images).labels
    picks = [rng.choice(len(images), size=rng.integers(2, 6, endpoint=True), replace=False) for _ in range(count)]
    strips = [row_of(images[p], rng, gap=(1, 8)) for p in picks]
    split_right = read_exactly = as_clean = digits_right = 0
    for pick, strip in zip(picks, strips):
        digits = layout.split_digits(next(render(strip[None], ROW, rng)))
        if len(digits) != len(pick):
            continue
        split_right += 1
        read = classifier.predict(np.stack(digits)).labels
        digits_right += int((read == labels[pick]).sum())
        read_exactly += bool((read == labels[pick]).all())
        as_clean += bool((read == clean[pick]).all())
    return {"split_right": split_right, "read_exactly": read_exactly, "as_clean": as_clean,
            "digits_right": digits_right, "digits": sum(len(p) for p in picks),
            "ceiling": float(np.mean([np.prod((clean == labels)[p]) for p in picks]))}

