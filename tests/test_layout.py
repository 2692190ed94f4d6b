"""Page layout on real MNIST test digits printed on paper: lines top to bottom, digits left to right, boxes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitpi import layout, preprocess


def page(digits: list[list[np.ndarray]], size: int = 112, gap: int = 40, margin: int = 60) -> tuple[bytes, list]:
    """PNG of test digits printed dark on white paper, one row per list, `size` px each and `gap`
    apart; and the box (left, top, right, bottom) of each digit's ink, as printed."""
    rows, cols = len(digits), max(len(row) for row in digits)
    width, height = 2 * margin + cols * (size + gap), 2 * margin + rows * (size + gap)
    paper = np.full((height, width), 255, np.uint8)
    boxes = []
    for r, row in enumerate(digits):
        line = []
        for c, digit in enumerate(row):
            big = np.asarray(Image.fromarray(digit).resize((size, size), Image.BICUBIC))
            top, left = margin + r * (size + gap), margin + c * (size + gap)
            paper[top:top + size, left:left + size] = np.minimum(paper[top:top + size, left:left + size], 255 - big)
            ys, xs = np.nonzero(big > 127)
            line.append((left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1))
        boxes.append(line)
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="PNG")
    return buffer.getvalue(), boxes


def test_two_lines_in_order_with_boxes(mnist_test) -> None:
    images, _ = mnist_test
    written = [[images[0], images[1], images[2]], [images[3], images[4]]]
    picture, boxes = page(written)
    lines = layout.read_page(picture)
    assert [len(line) for line in lines] == [3, 2]
    for line, expected in zip(lines, boxes):
        for digit, (left, top, right, bottom) in zip(line, expected):
            assert digit.image.shape == (28, 28) and digit.image.dtype == np.uint8
            # the box holds the digit's ink (to within the grey fringe a threshold leaves)
            assert np.allclose(digit.box, (left, top, right, bottom), atol=6), (digit.box, (left, top, right, bottom))
    assert np.array_equal(layout.split_digits(picture)[3], lines[1][0].image)  # reading order: line by line


def test_boxes_are_in_the_pictures_own_pixels(mnist_test) -> None:
    """A page stored turned (EXIF orientation 6) and large: boxes are where the viewer sees the digits."""
    images, _ = mnist_test
    picture, boxes = page([[images[0], images[1]]], size=400, gap=200, margin=300)
    upright = Image.open(io.BytesIO(picture))
    exif = Image.Exif()
    exif[preprocess.EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    lines = layout.read_page(buffer.getvalue())
    assert [len(line) for line in lines] == [2]
    for digit, expected in zip(lines[0], boxes[0]):
        assert np.allclose(digit.box, expected, atol=12), (digit.box, expected)


def test_a_page_photographed_askew_is_turned_level(mnist_test) -> None:
    """A page turned 20 degrees (beyond the 10 the model learned digits turned): its two lines are
    found, each digit is framed as upright as on the level page, and each box holds its digit where it
    lies on the turned picture. Before, the lines fell apart and the digits were framed turned."""
    images, _ = mnist_test
    picture, boxes = page([list(images[0:3]), list(images[3:6])])
    upright = Image.open(io.BytesIO(picture))
    level = layout.read_page(picture)
    askew = upright.rotate(20, Image.BICUBIC, expand=True, fillcolor=255)
    lines = layout.read_page(askew)
    assert [len(line) for line in lines] == [3, 3]
    cos, sin = math.cos(math.radians(20)), math.sin(math.radians(20))

    def turned(x: float, y: float) -> tuple[float, float]:
        x, y = x - upright.width / 2, y - upright.height / 2
        return x * cos + y * sin + askew.width / 2, -x * sin + y * cos + askew.height / 2

    for line, level_line, printed in zip(lines, level, boxes):
        for digit, flat, (left, top, right, bottom) in zip(line, level_line, printed):
            assert np.abs(digit.image.astype(int) - flat.image).mean() < 12  # what turning twice blurs
            xs, ys = zip(*(turned(x, y) for x in (left, right) for y in (top, bottom)))
            # the box around the printed box turned (to within the fringe a threshold leaves)
            assert np.allclose(digit.box, (min(xs), min(ys), max(xs), max(ys)), atol=8), (digit.box, xs, ys)


def test_a_page_in_a_dark_frame_turned_is_read(mnist_test) -> None:
    """A page turned 20 degrees inside a dark band a tenth of the picture wide, 6 px in from its edges
    (a mount, a scanner's lid): both lines of 5 digits. Before pages were turned level, its lines fell
    apart (1, 3, 1, 2 and 3 digits); turning the picture itself and inking it again read the band, no
    longer at the picture's edges, as ink around the page: one line of 2 digits."""
    images, _ = mnist_test
    picture, _ = page([list(images[0:5]), list(images[5:10])])
    askew = Image.open(io.BytesIO(picture)).rotate(20, Image.BICUBIC, expand=True, fillcolor=255)
    w, h = askew.size
    band, draw = (w // 10, h // 10), ImageDraw.Draw(askew)
    for box in [(6, 6, w - 7, 5 + band[1]), (6, h - 6 - band[1], w - 7, h - 7),
                (6, 6, 5 + band[0], h - 7), (w - 6 - band[0], 6, w - 7, h - 7)]:
        draw.rectangle(box, fill=0)
    assert [len(line) for line in layout.read_page(askew)] == [5, 5]


def test_a_line_of_specks_is_not_a_line(mnist_test) -> None:
    images, _ = mnist_test
    picture, _ = page([[images[0], images[1]]])
    paper = np.asarray(Image.open(io.BytesIO(picture))).copy()
    paper[20:24, 60:64] = 0  # dust above the line
    paper[-24:-20, 200:203] = 0  # and below it
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="PNG")
    assert [len(line) for line in layout.read_page(buffer.getvalue())] == [2]


def test_blank_page_names_its_source() -> None:
    buffer = io.BytesIO()
    Image.new("L", (200, 100), 255).save(buffer, format="PNG")
    with pytest.raises(preprocess.NoDigitError, match="^page.png: no digit found"):
        layout.read_page(buffer.getvalue(), name="page.png")
