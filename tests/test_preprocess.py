"""Preprocessing on real MNIST test digits made to look like photos and scans, and on hostile input.

The accuracy tests run the whole Pi pipeline (JPEG bytes -> preprocess -> exported model through
the runtime) over the full 10,000-image test set once per look, and print the accuracy.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter, ImageOps

from digitpi import UserError, layout, preprocess
from digitpi.bench.realistic import (
    CONTINENTAL_LOOK,
    ROW,
    VARIANTS,
    continental,
    pen_line,
    read_rows,
    render,
    row_of,
    variant_accuracy,
)


@pytest.fixture(scope="module")
def classifier(fast_export):
    """A good model (99.3 %): pictures that come out of preprocessing right are read right."""
    from digitpi import runtime

    return runtime.Classifier.load(fast_export)


@pytest.fixture(scope="module")
def default_classifier(exported_dir):
    """The default model, what `digitpi predict` runs: the accuracy thresholds below were measured with it."""
    from digitpi import runtime

    return runtime.Classifier.load(exported_dir)


def paper_png(digit: np.ndarray, scale: int = 8, margin: int = 60) -> bytes:
    """A test digit as dark ink on white paper, enlarged, with margins: a clean scan as PNG."""
    big = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.BICUBIC)
    page = Image.new("L", (28 * scale + 2 * margin + 40, 28 * scale + 2 * margin), 255)
    page.paste(big, (margin + 40, margin))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- framing like MNIST


def test_mnist_digits_come_back_as_they_were(mnist_test) -> None:
    """A digit that is already MNIST-framed passes through (nearly) unchanged: same box, same centre."""
    images = mnist_test[0][:500]
    out = np.stack([preprocess.to_mnist(image) for image in images])
    assert out.shape == (500, 28, 28) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - images).mean() < 4  # grey levels, of 255
    ink = out > 0
    height = 28 - ink.any(2).argmax(1) - ink.any(2)[:, ::-1].argmax(1)
    width = 28 - ink.any(1).argmax(1) - ink.any(1)[:, ::-1].argmax(1)
    assert (np.maximum(height, width) == 20).mean() > 0.99
    mass = out.astype(float).sum((1, 2))
    rows = (out.sum(2) * np.arange(28)).sum(1) / mass
    cols = (out.sum(1) * np.arange(28)).sum(1) / mass
    # placed on whole pixels, the centre is within half a pixel; grey levels rounded to uint8 move it a hundredth
    assert np.abs(rows - 14).max() <= 0.51 and np.abs(cols - 14).max() <= 0.51


def test_dark_ink_on_paper_is_framed_like_mnist(mnist_test) -> None:
    images = mnist_test[0][:50]
    out = np.stack([preprocess.to_mnist(paper_png(image)) for image in images])
    assert out.max(axis=(1, 2)).min() == 255 and (out[:, 0, :] == 0).all() and (out[:, :, 0] == 0).all()
    assert np.corrcoef(out.ravel().astype(float), images.ravel().astype(float))[0, 1] > 0.9


def test_exif_orientation_and_transparency(mnist_test, classifier) -> None:
    images, labels = mnist_test
    digit = images[0]
    upright = preprocess.to_mnist(paper_png(digit))
    # a phone stores the sensor's pixels turned and says so in EXIF: 6 = rotate 90 degrees clockwise to view
    turned = Image.open(io.BytesIO(paper_png(digit))).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    turned.convert("RGB").save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    assert np.abs(preprocess.to_mnist(buffer.getvalue()).astype(int) - upright).mean() < 6
    # a canvas export: black strokes on a fully transparent background (whose colour is black too)
    alpha = np.asarray(Image.fromarray(digit).resize((280, 280), Image.BICUBIC))
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    drawn = preprocess.to_mnist(Image.fromarray(rgba, "RGBA"))
    assert classifier.predict(drawn).labels[0] == labels[0]
    assert np.abs(drawn.astype(int) - upright).mean() < 6
    # white strokes on a transparent background, black or white behind them: over white paper they vanished
    for behind in (0, 255):
        rgba[..., :3] = np.where(alpha[..., None] > 0, 255, behind)
        drawn = preprocess.to_mnist(Image.fromarray(rgba, "RGBA"))
        assert np.abs(drawn.astype(int) - upright).mean() < 6


def test_a_thin_pen_digit_is_read_as_written(mnist_test, classifier) -> None:
    """Digits drawn with a 1-px pen on a large canvas. Before stroke normalization the model saw a
    faint 1-px line at 28x28 and answered "1" whatever was written; now it sees MNIST-thick strokes."""
    images, labels = mnist_test
    picks = [i for i in range(40) if labels[i] != 1][:12]
    read, widths = [], []
    for i in picks:
        line = pen_line(np.asarray(Image.fromarray(images[i]).resize((392, 392), Image.BICUBIC)), pen=1)
        buffer = io.BytesIO()
        Image.fromarray(255 - np.pad(line, 60)).save(buffer, format="PNG")  # black 1-px line on white paper
        seen = preprocess.to_mnist(buffer.getvalue())
        fine = np.asarray(Image.fromarray(seen).resize((112, 112), Image.BILINEAR)) > 127
        widths.append(preprocess.stroke_width(fine) / 4)  # px at 28x28
        read.append(classifier.predict(seen).labels[0])
    # Measured the same way, MNIST's own strokes are 1.3 px (5th percentile), 2.0 (median), 2.9 (90th).
    assert np.median(widths) >= 1.5 and min(widths) >= 1.25
    assert (np.array(read) == labels[picks]).mean() >= 11 / 12


def test_a_bold_digit_cropped_tight_is_found(mnist_test, classifier) -> None:
    """A marker-thick digit cropped to its box and binarized at 16x16 (as Semeion's scans are) is more
    ink than paper. The noise was once measured at the median pixel, which was then ink: 'no digit found'."""
    images, labels = mnist_test
    read, tried = 0, 0
    for image, label in zip(images[:200], labels[:200]):
        bold = np.asarray(Image.fromarray(image).filter(ImageFilter.MaxFilter(3))) > 100
        rows, cols = np.flatnonzero(bold.any(1)), np.flatnonzero(bold.any(0))
        crop = bold[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8) * 255
        scan = np.asarray(Image.fromarray(crop).resize((16, 16), Image.BILINEAR)) > 127
        if scan.mean() <= 0.5:
            continue
        buffer = io.BytesIO()
        Image.fromarray(np.where(scan, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        read += classifier.predict(preprocess.to_mnist(buffer.getvalue())).labels[0] == label
        tried += 1
    assert tried >= 100 and read >= 0.5 * tried  # measured 62 % (default model): stretched to fill 16x16


def cut_tight(image: np.ndarray, side: int = 150, bold: bool = True, dark: bool = False) -> bytes:
    """A test digit, thickened by a 3x3 maximum at 28 px (a marker) if `bold`, cut to its box and drawn
    `side` px long (PNG), light on dark or dark on light: as a drawing app that crops to the strokes
    saves it, or a digit cut out of a scanned form."""
    digit = Image.fromarray(image).filter(ImageFilter.MaxFilter(3)) if bold else Image.fromarray(image)
    rows, cols = np.flatnonzero(np.asarray(digit).max(1) > 30), np.flatnonzero(np.asarray(digit).max(0) > 30)
    digit = digit.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    scale = side / max(digit.size)
    digit = digit.resize((max(1, round(digit.width * scale)), max(1, round(digit.height * scale))), Image.BICUBIC)
    if dark:
        digit = ImageOps.invert(digit)
    buffer = io.BytesIO()
    digit.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_bold_digit_cut_tight_is_read_as_with_a_margin(mnist_test, default_classifier) -> None:
    """Cut tight, a stroke along the picture's edge went with the background (continued past the edge as
    light falling across a page) and strokes wider than two of the background's blocks read hollow. Now
    a digit whose ink reaches all four edges is read again with MNIST's margin (`preprocess.one_digit`).
    The first 200 test digits, light on dark, default model, 2026-12-07: bold 63 read right before, 99
    now (194 with MNIST's margin); MNIST's own strokes 180 before, 185 now (199), too close to test."""
    images, labels = mnist_test
    read = 0
    for image, label in zip(images[:200], labels[:200]):
        with contextlib.suppress(preprocess.NoDigitError):
            read += default_classifier.predict(preprocess.to_mnist(cut_tight(image))).labels[0] == label
    assert read >= 85


@pytest.mark.parametrize("side, bold, dark, least", [(40, False, True, 190), (96, True, False, 130)])
def test_a_digit_cut_tight_and_small_is_read(side, bold, dark, least, mnist_test, default_classifier) -> None:
    """Under 121 px the background's 3x3 blocks span a fifth of the picture or more. Cut tight, a digit
    puts strokes in every block, the opened grid, continued past the edges, swallowed whole strokes, and
    a clean digit was "no digit found". Now such a picture's background is one level where half its
    paper is one exact level, else the picture opened over squares a quarter of its size
    (`preprocess.small_background`). The first 200 test digits, default model, 2026-12-07: MNIST's
    strokes, 40 px, dark on light, 153 read right before (47 "no digit found"), 198 now; bold, 96 px,
    light on dark, 70 before, 147 now."""
    images, labels = mnist_test
    read = 0
    for image, label in zip(images[:200], labels[:200]):
        with contextlib.suppress(preprocess.NoDigitError):
            digit = preprocess.to_mnist(cut_tight(image, side, bold, dark))
            read += default_classifier.predict(digit).labels[0] == label
    assert read >= least


def test_large_photo_is_read(mnist_test, classifier) -> None:
    """A 12-megapixel JPEG with the digit in one corner: decoded at reduced scale, still read right."""
    images, labels = mnist_test
    photo = np.full((3000, 4000), 200, dtype=np.uint8)
    photo[400:1400, 600:1600] = 255 - np.asarray(Image.fromarray(images[1]).resize((1000, 1000), Image.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    start = time.perf_counter()
    image = preprocess.to_mnist(buffer.getvalue())
    print(f"\n12-MP JPEG -> 28x28 in {1000 * (time.perf_counter() - start):.1f} ms")
    assert classifier.predict(image).labels[0] == labels[1]


def test_a_camera_jpeg_with_padded_blocks_has_no_false_edge_stroke(mnist_test, classifier) -> None:
    """A phone's JPEG whose width is no multiple of its 16-px blocks pads the last block with dark data
    (wild-dev's desyrani 5.jpg). Decoded at 1/8 scale, the last column holds that padding half and half:
    a dark line down the right edge that was kept as ink beside the 5 and read "9". Made here by encoding
    912 px with 6 black columns at the right, then saying 906 px in the JPEG's frame header."""
    images, labels = mnist_test
    paper = np.full((1611, 912), 171, dtype=np.uint8)
    paper[:, 906:] = 0  # what the camera's encoder put in the padding
    paper[400:1200, 100:900] = 255 - np.asarray(Image.fromarray(images[0]).resize((800, 800), Image.BICUBIC)) * 0.6
    buffer = io.BytesIO()
    Image.fromarray(paper).convert("RGB").save(buffer, format="JPEG", quality=92)
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, height, width
    assert struct.unpack(">H", jpeg[sof + 7:sof + 9])[0] == 912
    jpeg[sof + 7:sof + 9] = struct.pack(">H", 906)
    gray = np.asarray(preprocess.load_image(bytes(jpeg), side=256), dtype=int)
    assert gray[:, -1].min() > 150  # paper to the edge: before, the last column read 86
    assert classifier.predict(preprocess.to_mnist(bytes(jpeg))).labels[0] == labels[0]


# ---------------------------------------------------------------- accuracy on real-looking pictures


@pytest.mark.parametrize("look", list(VARIANTS))
def test_accuracy_on_realistic_pictures(look: str, mnist_test, default_classifier) -> None:
    """Every third test digit (3,334, both halves of the test set) as a photo/scan of dark ink on paper
    still reads at >= 98.5 % accuracy; redrawn with a thin pen at >= 98.0 %. Measured with the default
    model of 2026-12-03: 99.34, 99.19, 99.19 and 98.62 % (scan, photo, shadow, thin pen). All 10,000, as
    benchmarks/preprocess_accuracy.py draws them, took 5.6 minutes of the suite's 19 on a slow CPU;
    over them, two trainings of the default recipe read the thin pen at 98.47 and 98.78 %."""
    classifier = default_classifier
    images, labels = mnist_test[0][::3], mnist_test[1][::3]
    start = time.perf_counter()
    accuracy, unread = variant_accuracy(classifier, images, labels, VARIANTS[look], np.random.default_rng(0))
    clean = float((classifier.predict(images).labels == labels).mean())
    print(f"\n{look}: accuracy {100 * accuracy:.2f} % (clean test set {100 * clean:.2f} %), "
          f"{unread} unread, {time.perf_counter() - start:.0f} s")
    assert accuracy >= (0.980 if look == "thin pen" else 0.985)


def test_continental_1s_and_7s_are_read_as_written(mnist_test, default_classifier) -> None:
    """Every test 1 given a long flag and every test 7 a crossbar, drawn with a pen by Pillow (not by
    the training augmentation) and printed as scans. The default model, trained with half its 1s
    flagged and 7s crossed, reads them at >= 96 % (measured: 97.9 and 98.5 % with seeds 0 and 1);
    trained without, 75.5 and 76.7 %."""
    images, labels = mnist_test
    ones_and_sevens = np.isin(labels, [1, 7])
    digits, truth = images[ones_and_sevens], labels[ones_and_sevens]
    drawn = continental(digits, truth, np.random.default_rng(0))
    accuracy, unread = variant_accuracy(default_classifier, drawn, truth, CONTINENTAL_LOOK, np.random.default_rng(0))
    print(f"\ncontinental 1s and 7s: {100 * accuracy:.2f} % of {len(truth)}, {unread} unread")
    assert accuracy >= 0.96


def test_small_digit_in_a_row_is_a_digit(mnist_test, classifier) -> None:
    """A digit written at half height between two others is read as a digit, not glued to its
    neighbour as a loose stroke would be; and faint blur between close digits does not join them."""
    images, labels = mnist_test
    rng = np.random.default_rng(0)
    for left, small, right in ((0, 15, 1), (2, 45, 3), (4, 8, 6)):  # test images: 7 5 2, 1 5 0, 4 5 4
        flat = np.asarray(Image.fromarray(images[small]).resize((28, 15), Image.BICUBIC))
        half = np.zeros_like(images[small])
        half[13:] = flat  # sitting on the line, as written
        strip = row_of(np.stack([images[left], half, images[right]]), rng, gap=(1, 1))
        digits = layout.split_digits(next(render(strip[None], ROW, rng)))
        assert len(digits) == 3
        assert (classifier.predict(np.stack(digits)).labels == labels[[left, small, right]]).all()


def test_a_2_keeps_its_base(mnist_dir) -> None:
    """A line drawn under a digit and touching it is cleared (`preprocess.clear_underline`); a 2's
    base, which reaches beyond the 2's stroke at both ends as often as not, is not such a line. Of
    2,000 training 2s drawn 112 px high, the ink of one is touched; without the rule for a digit on
    its own base (`rises_right`), of 15. The one is a 2 curled into a loop at its foot, whose base is
    found as a line since pictures under 121 px have `small_background` (2026-12-07; not before): the
    loop's edge steps 21 px where `rises_right` allows a quarter of its 82-px height (a 3's step). It
    reads 2 either way."""
    from digitpi import data

    images, labels = data.load_split("mnist", "train", mnist_dir)
    touched = 0
    for image in images[labels == 2][:2000]:
        big = 255 - np.asarray(Image.fromarray(image).resize((112, 112), Image.BICUBIC))
        ink = preprocess.ink_map(preprocess.gray_array(Image.fromarray(big), 256))
        before = ink.copy()
        preprocess.ink_blobs(ink)
        touched += not np.array_equal(ink, before)
    assert touched <= 1


ROWS = 1000


def test_rows_of_digits(mnist_test, default_classifier) -> None:
    """Rows of 2-6 test digits, 1-8 px apart at 28-px scale (written apart, not touching), read left to right."""
    classifier = default_classifier
    images, labels = mnist_test
    rows = read_rows(classifier, images, labels, ROWS, np.random.default_rng(1))
    count_ok, string_ok, model_ok = rows["split_right"], rows["read_exactly"], rows["as_clean"]
    expected = rows["ceiling"]  # rows the model gets right when clean
    print(f"\nrows: {100 * count_ok / ROWS:.1f} % split into the right number of digits, "
          f"{100 * string_ok / ROWS:.1f} % read exactly (clean digits: {100 * expected:.1f} %), "
          f"{100 * model_ok / ROWS:.1f} % as the model reads the clean digits, "
          f"{100 * rows['digits_right'] / rows['digits']:.2f} % of digits right")
    # These 1,000 rows, default model: 99.7 % split right, 96.8 % read exactly (ceiling 97.8 %), 98.2 % as
    # clean. Over 5,000 rows (benchmarks/preprocess_accuracy.py) it reads 97.5 % exactly (ceiling 97.9 %):
    # 1,000 rows carry about half a point of sampling noise, hence the margin below the 97 % aimed for.
    assert count_ok / ROWS >= 0.99
    assert model_ok / ROWS >= 0.975
    assert string_ok / ROWS >= 0.96
    assert string_ok / ROWS >= expected - 0.015


# ---------------------------------------------------------------- errors


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and holds one empty data chunk: a decompression bomb."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("payload, message", [
    (b"", "empty file"),
    (b"digit,label\n7,7\n", "not an image"),
    (png_header_only(40_000, 40_000), "too large"),
    (png_header_only(12_000, 9_000), "too large"),  # 108 MP: under Pillow's own bomb limit, over ours
])
def test_unreadable_input(payload: bytes, message: str) -> None:
    with pytest.raises(preprocess.ImageError, match=message) as err:
        preprocess.to_mnist(payload)
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)


@pytest.mark.parametrize("source", [np.zeros((0, 3, 3), np.uint8), np.zeros((5, 0, 4), np.uint8),
                                    Image.new("L", (0, 5)), Image.new("F", (5, 0)), Image.new("RGB", (0, 0))],
                         ids=["array-0x3-rgb", "array-5x0-rgba", "image-0x5-L", "image-5x0-F", "image-0x0-RGB"])
def test_pictures_without_pixels(source) -> None:
    """Empty colour arrays and Pillow images of no pixels (once an IndexError deep in the ink map)."""
    for read in (preprocess.to_mnist, layout.read_page):
        with pytest.raises(preprocess.ImageError, match="not an image|no pixels") as err:
            read(source)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("scale, offset", [(1e-37, 0.0), (4e38 / 255, -2e38)])
def test_float_pictures_of_any_range(scale: float, offset: float, mnist_test) -> None:
    """A float array is read over its own range, however tiny or huge: float32 arithmetic overflowed (a
    ValueError) where float64 does not."""
    digit = mnist_test[0][0]
    scaled = (digit.astype(np.float64) * scale + offset).astype(np.float32)
    assert np.array_equal(preprocess.to_mnist(scaled), preprocess.to_mnist(digit.astype(np.float32)))


def test_messages_name_what_the_caller_names(tmp_path) -> None:
    """A path names itself; bytes are named by the caller (`digitpi predict -`: standard input) or not at all."""
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 30), 255).save(blank)
    for source, name, start in ((b"", None, "empty file"), (b"", "standard input", "standard input: empty file"),
                                (blank, None, f"{blank}: no digit found"),
                                (blank.read_bytes(), "upload", "upload: no digit found")):
        for read in (preprocess.to_mnist, layout.split_digits):
            with pytest.raises(preprocess.ImageError) as err:
                read(source, name=name)
            assert str(err.value).startswith(start)


def test_truncated_png(mnist_test) -> None:
    png = paper_png(mnist_test[0][0])
    with pytest.raises(preprocess.ImageError, match="cannot decode|not an image"):
        preprocess.to_mnist(png[:len(png) // 2])


def test_missing_file(tmp_path) -> None:
    with pytest.raises(preprocess.ImageError, match="no such file"):
        preprocess.load_image(tmp_path / "nothing.png")


def test_a_sharp_shadow_across_the_digit_changes_little(mnist_test) -> None:
    """50 test digits as dark ink on paper, a sharp shadow over the picture's left half (the light cut to
    half: its edge crosses most digits), come out nearly as they do without it: 3.2 grey levels apart on
    the mean. Before `preprocess.under_shadows`, 33.4: the edge was kept as a line of ink with the digit."""
    apart = []
    for digit in mnist_test[0][:50]:
        page = np.asarray(Image.open(io.BytesIO(paper_png(digit))), dtype=np.float32)
        shaded = page.copy()
        shaded[:, :page.shape[1] // 2] *= 0.5
        plain, shadowed = (preprocess.to_mnist(p.astype(np.uint8)).astype(np.float32) for p in (page, shaded))
        apart.append(np.abs(plain - shadowed).mean())
    assert np.mean(apart) < 8, np.round(apart, 1)


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 30), width=st.integers(1, 30), half=st.integers(0, 16), seed=st.integers(0, 2**32 - 1),
       op=st.sampled_from([np.minimum, np.maximum]), dtype=st.sampled_from([np.float32, np.uint8, np.bool_]))
def test_spread_is_the_extreme_of_each_square(height, width, half, seed, op, dtype) -> None:
    """In any dtype: grey levels, and masks (grown and eroded by `dilated` and `mean_depth`)."""
    values = (np.random.default_rng(seed).random((height, width)) * (2 if dtype is np.bool_ else 256)).astype(dtype)
    k = 2 * half + 1
    expected = [[op.reduce(values[max(0, i - half):i + half + 1, max(0, j - half):j + half + 1], axis=None)
                 for j in range(width)] for i in range(height)]
    assert np.array_equal(preprocess.spread(values, k, op), np.array(expected, dtype=dtype))


def blank_under_a_shadow(where: str) -> np.ndarray:
    """A phone photo of blank paper (grain, light falling off, JPEG) under a sharp shadow that cuts the
    light by 40 %: a hand or a phone over the page, or a lamp's cut-off."""
    rows, columns = np.mgrid[0:480, 0:640]
    paper = 215 + 20 * columns / 640 + np.random.default_rng(0).normal(0, 4, (480, 640))
    shade = {"left": columns < 256, "corner": (columns > 384) & (rows > 240), "diagonal": rows + columns < 392}[where]
    edge = np.asarray(Image.fromarray(shade.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(2))) / 255
    buffer = io.BytesIO()
    Image.fromarray(np.clip(paper * (1 - 0.4 * edge), 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    return np.asarray(Image.open(buffer))


@pytest.mark.parametrize("make", [
    lambda: np.full((300, 400), 255, np.uint8),  # white page
    lambda: np.full((300, 400), 17, np.uint8),  # black page
    lambda: np.clip(np.random.default_rng(0).normal(200, 2, (300, 400)), 0, 255).astype(np.uint8),  # grain
    lambda: np.clip(np.random.default_rng(2).normal(200, 6, (300, 400)), 0, 255).astype(np.uint8),  # once a digit
    # once a digit as an array (not as a file): a uint8 array was stretched to its own range, grain and all
    lambda: np.clip(np.random.default_rng(8).normal(200, 6, (480, 640)), 0, 255).astype(np.uint8),
    lambda: np.pad(np.full((1, 1), 120, np.uint8), ((150, 149), (200, 199)), constant_values=230),  # one speck
    lambda: np.tile(np.linspace(120, 240, 400, dtype=np.float32).astype(np.uint8), (300, 1)),  # light gradient
    # once a 1 along the shadow's edge: the edge departed from the blocks straddling it (the ink's side
    # then judged light on the page), and the shadow, the darkest thing there, was taken for ink
    lambda: blank_under_a_shadow("left"),
    lambda: blank_under_a_shadow("corner"),
    lambda: blank_under_a_shadow("diagonal"),
])
def test_blank_pages_have_no_digit(make) -> None:
    """As a PNG file and as the array itself (the Python API, a grey camera frame)."""
    page = make()
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="PNG")
    for read in (preprocess.to_mnist, layout.split_digits):
        for source in (buffer.getvalue(), page):
            with pytest.raises(preprocess.NoDigitError, match="no digit found"):
                read(source)


# ---------------------------------------------------------------- anything at all


MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]
FORMATS = [None, "PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def random_picture(mode: str, width: int, height: int, kind: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        levels = rng.integers(0, 256, (height, width))
    elif kind == "flat":
        levels = np.full((height, width), rng.integers(0, 256))
    else:  # strokes: random lines on a random background
        levels = np.full((height, width), rng.integers(0, 256))
        for _ in range(rng.integers(1, 6)):
            r0, r1 = sorted(rng.integers(0, height, 2))
            c0, c1 = sorted(rng.integers(0, width, 2))
            levels[r0:r1 + 1, c0:c0 + 1 + rng.integers(0, 10)] = rng.integers(0, 256)
            levels[r0:r0 + 1 + rng.integers(0, 10), c0:c1 + 1] = rng.integers(0, 256)
    gray = levels.astype(np.uint8)
    if mode == "F":
        values = gray.astype(np.float32) * rng.uniform(-1e6, 1e6)
        count = min(3, values.size)
        values.ravel()[rng.integers(0, values.size, count)] = [np.nan, np.inf, -np.inf][:count]
        return Image.fromarray(values, "F")
    if mode in ("I", "I;16", "I;16B"):
        wide = Image.fromarray(gray.astype(np.uint16) * 257)
        return wide.convert("I") if mode == "I" else wide if mode == "I;16" else wide.convert("I;16B")
    image = Image.fromarray(gray, "L")
    if mode == "RGBa":
        return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA").convert("RGBa")
    if mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
        return image.convert(mode)
    if mode in ("LAB", "HSV"):
        return image.convert("RGB").convert(mode) if mode == "HSV" else Image.merge("LAB", [image] * 3)
    return image.convert(mode)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), width=st.integers(1, 400), height=st.integers(1, 400),
       kind=st.sampled_from(["noise", "flat", "strokes"]), fmt=st.sampled_from(FORMATS),
       seed=st.integers(0, 2**32 - 1), multi=st.booleans())
def test_any_image_ends_in_28x28_or_a_clear_error(mode, width, height, kind, fmt, seed, multi) -> None:
    image = random_picture(mode, width, height, kind, seed)
    source: object = image
    if fmt is not None:
        buffer = io.BytesIO()
        try:
            image.save(buffer, format=fmt)
        except (OSError, ValueError, KeyError):  # this format cannot hold this mode: the image itself is tested
            fmt = None
        source = buffer.getvalue() if fmt else image
    try:
        out = layout.split_digits(source) if multi else [preprocess.to_mnist(source)]
    except preprocess.ImageError as e:
        event(f"{type(e).__name__}")
        assert "\n" not in str(e) and str(e)
        return
    event("28x28")
    assert out and all(d.shape == (28, 28) and d.dtype == np.uint8 for d in out)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2000), cut=st.integers(0, 10_000))
def test_any_bytes_end_in_28x28_or_a_clear_error(data: bytes, cut: int, mnist_test) -> None:
    """Random bytes, and real PNG/JPEG files cut short or with bytes overwritten."""
    png = paper_png(mnist_test[0][cut % 100], scale=4, margin=10)
    for payload in (data, png[:cut % len(png)], png[:200] + data + png[200 + len(data):]):
        try:
            out = preprocess.to_mnist(payload)
        except preprocess.ImageError:
            continue
        assert out.shape == (28, 28) and out.dtype == np.uint8


def test_pi_side_never_imports_torch() -> None:
    import subprocess

    code = ("import sys, numpy as np; from digitpi import preprocess; "
            "preprocess.to_mnist(np.pad(np.full((10, 4), 255, np.uint8), 9)); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_bench_preprocess_pictures_are_read_right(mnist_test, classifier, capsys) -> None:
    """The benchmark times pictures the model actually reads: each holds the digit it claims to."""
    from digitpi.bench import preprocess as bench
    from digitpi.cli import main

    images, labels = mnist_test
    for i in range(3):
        pictures = bench.pictures(images[i:i + 12])
        page = layout.split_digits(pictures.pop(bench.PAGE))
        assert list(classifier.predict(np.stack(page)).labels) == list(labels[i:i + 12])
        read = [classifier.predict(preprocess.to_mnist(p)).labels[0] for p in pictures.values()]
        assert read == [labels[i]] * len(read)
    assert main(["bench", "preprocess", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 6 and all(r["median_ms"] > 0 for r in rows)
