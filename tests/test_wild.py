"""Real handwriting that is not MNIST (../shared/wild-dev, read in place): `digitpi bench wild` on a sample.

Every 4th single digit of each source (133 pictures) and all five multi-digit pages, read by the
default model as `digitpi predict` reads them. Before stroke normalization, the page layout and the
polarity fix, the same model read 83.5 % of this sample (photos 70 %) and 1 of the 5 pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from digitpi import UserError, preprocess, reading, runtime
from digitpi.bench import wild
from digitpi.cli import main

WILD = Path(__file__).resolve().parents[2] / "shared" / "wild-dev"


@pytest.fixture(scope="module")
def wild_dir() -> Path:
    if not (WILD / "labels.csv").is_file():
        pytest.fail(f"real handwriting not found in {WILD}: CI clones the repository beside ../shared")
    return WILD


def test_bench_wild_reads_real_handwriting(exported_dir, wild_dir, tmp_path, capsys) -> None:
    sheet = tmp_path / "misread.png"
    assert main(["bench", "wild", "--model", str(exported_dir), "--data", str(wild_dir), "--every", "4",
                 "--sheet", str(sheet), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    single, per_medium, multi = result["single"], result["per_medium"], result["multi"]
    print(f"\nwild-dev sample: {100 * single['accuracy']:.1f} % of {single['pictures']} single digits; "
          + ", ".join(f"{medium} {100 * s['accuracy']:.1f} %" for medium, s in per_medium.items())
          + f"; pages read exactly {multi['right']} / {multi['pictures']}")
    assert single["pictures"] == 133 and multi["pictures"] == 5
    assert single["accuracy"] >= 0.90
    assert all(s["accuracy"] >= 0.85 for s in per_medium.values())
    assert multi["right"] == 5, result["multi_reads"]
    misread = single["pictures"] - single["right"]
    assert Image.open(sheet).size == (8 * 104, 132 * -(-misread // 4))  # 4 misread digits a row, each with its 28x28


def test_a_continental_writer_is_read(exported_dir, wild_dir, capsys) -> None:
    """All 519 single digits; the writer whose 1s carry a long flag (kitonjicsm/digit-eye, 20 of each
    digit). Without continental 1s in training the default recipe read 7-8 of those 1s (seeds 0-2; the
    rest as 7); with them, 14, 15 and 17, 13-15 on another CPU, 11 for seed 0 trained with one thread
    (torch sums in another order), and all their 7s still. 10 lies between: without the feature the
    test fails, and it has a margin over the lowest reading with it. In all, 95.4 % (seed 0)."""
    assert main(["bench", "wild", "--model", str(exported_dir), "--data", str(wild_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    right = {digit: sum(r["read"] == r["expected"] for r in result["results"] if f"digit-eye/{digit}/" in r["file"])
             for digit in "17"}
    print(f"\nwild-dev: {100 * result['single']['accuracy']:.1f} % of {result['single']['pictures']}; "
          f"the continental writer's 1s {right['1']} / 20, 7s {right['7']} / 20")
    assert right["1"] >= 10 and right["7"] >= 19
    assert result["single"]["accuracy"] >= 0.94


@pytest.fixture(scope="module")
def classifier(exported_dir):
    """The default model, as `digitpi predict` loads it."""
    return runtime.Classifier.load(exported_dir)


def singles(wild_dir: Path, medium: str) -> list[dict]:
    """wild-dev's single digits of one medium, in labels.csv's order."""
    return [r for r in wild.rows_of(wild_dir, every=1) if r["kind"] == "single" and r["medium"] == medium]


def reads_right(classifier, source, label: str) -> bool:
    try:
        return reading.read(classifier, source).text == label
    except UserError:  # no digit found
        return False


def cropped_tight(gray: np.ndarray) -> Image.Image:
    """The drawing cut to its ink, no margin: a digit cut out of a larger drawing or a screenshot."""
    rows, columns = np.nonzero(gray < 128)
    return Image.fromarray(gray[rows.min():rows.max() + 1, columns.min():columns.max() + 1])


def cut_tight_small(gray: np.ndarray) -> Image.Image:
    """The drawing cut to its ink and shrunk to 40 px on its longer side: a digit cut out of a scanned
    form or a small screenshot."""
    return long_side(cropped_tight(gray), 40, Image.LANCZOS)


def long_side(digit: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    """`digit` resized to `side` px on its longer side, its shape kept."""
    scale = side / max(digit.size)
    return digit.resize((max(1, round(digit.width * scale)), max(1, round(digit.height * scale))), resample)


def white_on_transparent(gray: np.ndarray) -> Image.Image:
    """The drawing as a web canvas saves white strokes it never filled behind: the ink is the opaque part."""
    rgba = np.full(gray.shape + (4,), 255, dtype=np.uint8)
    rgba[..., 3] = 255 - gray
    return Image.fromarray(rgba, "RGBA")


def small_on_a_page(gray: np.ndarray) -> Image.Image:
    """The drawing's ink 200 px tall (a fifteenth of the page's width) on a 3000x4000 photo of grey-white
    paper: a whole page taken with one digit on it. Drawings larger than that are not shrunk to it: their
    thin pen would become thinner than any pen on a photographed page."""
    rows, columns = np.nonzero(gray < 128)
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    scale = max(1.0, 200 / (bottom - top))
    digit = Image.fromarray(gray[top:bottom, left:right]).resize(
        (round((right - left) * scale), round((bottom - top) * scale)), Image.BICUBIC)
    page = np.full((4000, 3000), 235.0, dtype=np.float32)
    page[1900:1900 + digit.height, 1400:1400 + digit.width] *= np.asarray(digit, dtype=np.float32) / 255
    return Image.fromarray(page.astype(np.uint8))


@pytest.mark.parametrize("change", [cropped_tight, cut_tight_small, white_on_transparent, small_on_a_page])
def test_canvas_drawings_are_read_as_users_save_them(change, classifier, wild_dir) -> None:
    """Every 4th canvas drawing (63), saved as users also save them, reads as the drawing itself does, within 2.
    Before, 13 of the tight crops were "no digit found" (the noise was measured on the ink that filled them),
    every white-on-transparent drawing was blank (transparency was composited over white), and so was a
    page whose digit darkened fewer than 0.5 % of the blocks its darkest level was taken from. Cut tight
    and shrunk to 40 px, 35 read right before 2026-12-07 (the background's blocks swallowed strokes), 60 now."""
    rows = singles(wild_dir, "canvas")[::4]

    drawn = changed = 0
    for row in rows:
        gray = np.asarray(Image.open(wild_dir / row["file"]).convert("L"))
        drawn += reads_right(classifier, wild_dir / row["file"], row["label"])
        changed += reads_right(classifier, change(gray), row["label"])
    assert len(rows) == 63 and drawn >= 58 and changed >= drawn - 2, (drawn, changed)


def bold_and_cut_tight(gray: np.ndarray, brush: int = 9) -> Image.Image:
    """The drawing cut to its ink, drawn 200 px long, its strokes widened by `brush` px (a wide brush or a
    marker: a fifth of the digit's height on the median, the drawings' own a seventh) and cut to its ink
    again, as a drawing app that crops to the strokes saves it."""
    digit = long_side(cropped_tight(gray), 200, Image.BICUBIC)
    return cropped_tight(np.asarray(digit.filter(ImageFilter.MinFilter(brush))))


def canvas_read_right(classifier, wild_dir: Path, change) -> tuple[int, int]:
    """How many of every 4th canvas drawing read right once `change`d (grey levels in, a picture out), and of how
    many."""
    rows = singles(wild_dir, "canvas")[::4]
    read = sum(reads_right(classifier, change(np.asarray(Image.open(wild_dir / row["file"]).convert("L"))),
                           row["label"]) for row in rows)
    return read, len(rows)


def test_bold_drawings_cut_tight_are_read_solid(classifier, wild_dir) -> None:
    """Bold strokes cut tight leave less paper than ink. A digital picture's background is its paper's one
    exact level (`preprocess.digital_paper`), but that asked for the level over half the picture; these
    fell to the background's blocks, which kept the level of strokes wider than three of them, and read
    hollow. Every 4th canvas drawing (63), default model, 2026-12-07: 42 read right before, 53 now (60
    cut tight as drawn)."""
    read, drawings = canvas_read_right(classifier, wild_dir, bold_and_cut_tight)
    assert drawings == 63 and read >= 50, read


def photographed(gray: np.ndarray, paper: float, depth: float, brush: int = 1) -> np.ndarray:
    """The drawing as a photo of it: 300 px, its strokes widened by `brush` px, its ink `depth` grey levels below
    paper of `paper`, with the camera's grain (4 levels)."""
    drawn = Image.fromarray(gray).resize((300, 300), Image.BICUBIC).filter(ImageFilter.MinFilter(brush))
    photo = paper - (255 - np.asarray(drawn, dtype=np.float32)) * (depth / 255)
    return np.clip(photo + np.random.default_rng(0).normal(0, 4, photo.shape), 0, 255).astype(np.uint8)


def in_marker(gray: np.ndarray, light_on_dark: bool = False) -> Image.Image:
    """A photo of the drawing in marker: strokes widened by 9 px (a fifth of the digit's height on the median),
    grey ink 120 levels below grey paper; or light on dark, as chalk on a slate."""
    photo = photographed(gray, paper=215, depth=120, brush=9)
    return Image.fromarray(255 - photo if light_on_dark else photo)


@pytest.mark.parametrize("light_on_dark", [False, True], ids=["dark_on_light", "light_on_dark"])
def test_marker_strokes_in_a_photo_are_read_solid(light_on_dark: bool, classifier, wild_dir) -> None:
    """A photo has grain, so its background is measured in blocks (16 along the longer side), opened over 3x3 of
    them. Where a marker's strokes meet, the ink is wider than that, and its blocks kept the ink's level: the
    strokes read hollow (an 8 read 3, a 4 read 6). Now a group of blocks at the ink's level that does not reach
    the picture's edge and is no wider than a shadow takes the paper's level around it
    (`preprocess.without_strokes`). Every 4th canvas drawing (63), default model, 2026-12-07: before, 47 dark on
    light and 43 light on dark; now 59 and 57 (60 as drawn)."""
    read, drawings = canvas_read_right(classifier, wild_dir, lambda gray: in_marker(gray, light_on_dark))
    assert drawings == 63 and read >= 53, read


def in_faint_pencil(gray: np.ndarray) -> Image.Image:
    """A photo of the drawing in faint pencil: a thin grey line 25 levels below grey paper."""
    return Image.fromarray(photographed(gray, paper=210, depth=25))


def test_faint_pencil_is_not_smoothed_away(classifier, wild_dir) -> None:
    """A grainy picture is smoothed until its grain is under a 40th of its contrast. Smoothing fades a thin line,
    and the contrast was measured again after each pass, so a faint pencil asked for more passes until the line
    sank under the noise floor ("no digit found"). Now the contrast is the picture's as it came. Every 4th
    canvas drawing (63), default model, 2026-12-07: before, 55 read right; now 60 (60 as drawn)."""
    read, drawings = canvas_read_right(classifier, wild_dir, in_faint_pencil)
    assert drawings == 63 and read >= 58, read


def test_scans_enlarged_are_read_as_the_scans(classifier, wild_dir) -> None:
    """Semeion's 200 scans (16x16, binarized) enlarged ten times, nearest neighbour (as a viewer or a web page
    shows a small scan, and a user saves it), read as the scans themselves do, within 3: measured 191 against 192.
    Before, 157: at 160 px the background is measured in blocks, and a block inside a blocky stroke wider than
    three blocks kept the stroke's level, so the strokes read hollow. Now a digital picture (its paper one exact
    level over 70 % of its side of Otsu's split, what stands above it full ink) has that one level
    (`preprocess.digital_paper`)."""
    rows = singles(wild_dir, "dataset scan (Semeion, 16x16 binarized)")
    scanned = enlarged = 0
    for row in rows:
        with Image.open(wild_dir / row["file"]) as scan:
            scan = scan.convert("L")
            scanned += reads_right(classifier, scan, row["label"])
            enlarged += reads_right(classifier, scan.resize((10 * scan.width, 10 * scan.height), Image.NEAREST),
                                    row["label"])
    assert len(rows) == 200 and scanned >= 185 and enlarged >= scanned - 3, (scanned, enlarged)


DESK = (55, 45, 38)  # dark-brown wood


def on_a_desk(photo: Image.Image, scale: float = 1.5, colour: tuple[int, int, int] = DESK) -> Image.Image:
    """The sheet photographed from further away, on a desk (dark unless `colour` says): turned 3 degrees,
    the picture `scale` times the sheet's size (1.5: the desk a quarter of the sheet's size on each side)."""
    sheet = photo.convert("RGB").rotate(3, Image.BICUBIC, expand=True, fillcolor=colour)
    desk = Image.new("RGB", (round(scale * sheet.width), round(scale * sheet.height)), colour)
    desk.paste(sheet, ((desk.width - sheet.width) // 2, (desk.height - sheet.height) // 2))
    return desk


def far_on_a_desk(photo: Image.Image) -> Image.Image:
    """A card or small sheet lying whole on a dark desk, a third of the picture's width and height."""
    return on_a_desk(photo, 3.0)


def on_a_grey_desk(photo: Image.Image) -> Image.Image:
    """The sheet on a mid-grey desk, a quarter of the sheet's size around it."""
    return on_a_desk(photo, colour=(110, 110, 110))


WHITE_DESK = (240, 240, 240)  # lighter than the paper of most of wild-dev's photos, grey in their light


def on_a_white_desk(photo: Image.Image, scale: float = 1.5) -> Image.Image:
    """The sheet on a white table, the picture `scale` times the sheet's size."""
    return on_a_desk(photo, scale, WHITE_DESK)


def far_on_a_white_desk(photo: Image.Image) -> Image.Image:
    """A card or small sheet lying whole on a white table, a third of the picture's width and height."""
    return on_a_white_desk(photo, 3.0)


def by_a_desk(left: float, bottom: float = 0.0, turn: float = 3.0):
    """The sheet photographed near, on a dark desk that shows along its left (`left` of its width) and
    bottom (`bottom` of its height); it runs past the picture's other edges. Turned `turn` degrees: the
    frame then cuts 4 % off the sheet along those edges, where the turn uncovered the corners."""
    def on_the_desk(picture: Image.Image) -> Image.Image:
        sheet = picture.convert("RGB").rotate(turn, Image.BICUBIC, expand=True, fillcolor=DESK)
        desk = Image.new("RGB", (round(sheet.width * (1 + left)), round(sheet.height * (1 + bottom))), DESK)
        desk.paste(sheet, (round(sheet.width * left), 0))
        cut_w, cut_h = (round(0.04 * n) if turn else 0 for n in sheet.size)
        return desk.crop((0 if left else cut_w, cut_h, desk.width - cut_w, desk.height - (0 if bottom else cut_h)))
    return on_the_desk


def digit_pixels(photo: Image.Image) -> tuple[np.ndarray, np.ndarray, int]:
    """Where the digit is, as this code reads the picture as it is: its pixels' rows and columns, and its size."""
    gray = np.asarray(photo.convert("L"), dtype=np.float32)
    rows, columns = np.nonzero(preprocess.digit_ink(preprocess.ink_map(gray)))
    return rows, columns, max(rows.max() - rows.min(), columns.max() - columns.min())


def paper_colour(picture: Image.Image) -> tuple[int, int, int]:
    """The picture's median colour: its paper's, where the digit covers less than half of it."""
    return tuple(int(v) for v in np.median(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0))


def in_a_box(photo: Image.Image) -> Image.Image:
    """The digit written in a box, as on a form: the box a fifth of the digit's size away from it, an
    eighteenth of it thick."""
    rows, columns, size = digit_pixels(photo)
    gap, pad = round(size / 5), round(size / 5) + 4
    paper = paper_colour(photo)
    boxed = Image.new("RGB", (photo.width + 2 * pad, photo.height + 2 * pad), paper)
    boxed.paste(photo.convert("RGB"), (pad, pad))
    ImageDraw.Draw(boxed).rectangle((columns.min() + pad - gap, rows.min() + pad - gap, columns.max() + pad + gap,
                                     rows.max() + pad + gap), outline=(20, 20, 20), width=max(1, round(size / 18)))
    return boxed


def under_a_shadow(photo: Image.Image) -> Image.Image:
    """The phone's shadow over most of the sheet: the light cut to 45 % beyond a line at 30 degrees, a
    tenth of the picture's size short of its middle, the shadow's edge soft over 3 % of the picture."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32)
    rows, columns = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]].astype(np.float32)
    size = max(rgb.shape)
    across = (columns - rgb.shape[1] / 2) * np.cos(np.pi / 6) + (rows - rgb.shape[0] / 2) * np.sin(np.pi / 6)
    light = 1.0 - 0.55 / (1.0 + np.exp(-(across + 0.1 * size) / (0.03 * size)))
    return Image.fromarray(np.round(rgb * light[..., None]).astype(np.uint8))


def under_a_hard_shadow(right: float, top: float = 0.0, light: float = 0.5):
    """A sharp shadow (a hand, a phone, a lamp's cut-off) over the picture's left `right` and lower
    1 - `top`: the light cut to `light`."""
    def shaded(picture: Image.Image) -> Image.Image:
        rgb = np.asarray(picture.convert("RGB"), dtype=np.float32)
        rgb[round(top * rgb.shape[0]):, :round(right * rgb.shape[1])] *= light
        return Image.fromarray(rgb.astype(np.uint8))
    return shaded


def printed_lines(picture: Image.Image, spacing: float, thick: float, colour: tuple[int, int, int], turn: float,
                  grid: bool) -> Image.Image:
    """The picture's paper printed with lines `spacing` px apart (and columns, for a `grid`), `thick` px,
    of `colour` on white, turned `turn` degrees as a phone held askew turns them."""
    rgb = np.asarray(picture.convert("RGB"), dtype=np.float32)
    rows, columns = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]].astype(np.float32)
    angle = np.radians(turn)
    across = [rows * np.cos(angle) - columns * np.sin(angle), columns * np.cos(angle) + rows * np.sin(angle)]
    ink = np.zeros(rgb.shape[:2], dtype=np.float32)
    for along in across[:2 if grid else 1]:
        distance = np.abs((along + spacing / 2) % spacing - spacing / 2)  # to the nearest line's middle
        ink = np.maximum(ink, np.clip(thick / 2 + 0.5 - distance, 0.0, 1.0))  # anti-aliased
    paper = 1.0 - ink[..., None] * (1.0 - np.asarray(colour, dtype=np.float32) / 255)
    return Image.fromarray(np.round(rgb * paper).astype(np.uint8))


def underlined(photo: Image.Image, gap: float = 1 / 8) -> Image.Image:
    """A line drawn under the digit, as an answer is underlined or a 6 told from a 9: `gap` of the
    digit's size below it, 30 % wider than it, an eighteenth of its size thick, falling 2 degrees."""
    rows, columns, size = digit_pixels(photo)
    below, reach = rows.max() + round(gap * size), 0.15 * (columns.max() - columns.min())
    left, right = columns.min() - reach, columns.max() + reach
    paper = paper_colour(photo)
    drawn = Image.new("RGB", (photo.width, max(photo.height, below + round(size / 6))), paper)
    drawn.paste(photo.convert("RGB"))
    ImageDraw.Draw(drawn).line((left, below, right, below + np.tan(np.radians(2)) * (right - left)), fill=(30, 30, 30),
                               width=max(1, round(size / 18)))
    return drawn


def underlined_touching(photo: Image.Image) -> Image.Image:
    """The line drawn along the digit's lowest point: the digit stands on it, one blob with it."""
    return underlined(photo, gap=0.0)


GRID, RULING = (165, 180, 205), (150, 190, 235)  # grey-blue squares, light-blue lines


def on_squared_paper(photo: Image.Image) -> Image.Image:
    """Written on squared paper, the squares a third of the digit's size, the lines a sixtieth of it (1 px
    or more), turned 2 degrees."""
    size = digit_pixels(photo)[2]
    return printed_lines(photo, size / 3, max(1.0, size / 60), GRID, 2.0, grid=True)


def on_ruled_paper(photo: Image.Image) -> Image.Image:
    """Written on ruled paper, the lines half the digit's size apart, turned 3 degrees the other way."""
    size = digit_pixels(photo)[2]
    return printed_lines(photo, size / 2, max(1.0, size / 60), RULING, -3.0, grid=False)


def turned(degrees: float):
    """The picture turned `degrees` (anticlockwise), as a phone held askew turns it: the corners it
    uncovers filled with its median colour, the paper's."""
    def turned_by(picture: Image.Image) -> Image.Image:
        return picture.convert("RGB").rotate(degrees, Image.BICUBIC, expand=True, fillcolor=paper_colour(picture))
    return turned_by


def askew(change, degrees: float):
    """`change` (squared or ruled paper), then the picture turned `degrees`: a notebook photographed askew."""
    def photographed_askew(picture: Image.Image) -> Image.Image:
        return turned(degrees)(change(picture))
    return photographed_askew


def blurred(change):
    """`change` (squared or ruled paper), then the photo a little out of focus (a Gaussian blur of 0.5 % of its
    size): a printed line widens and fades."""
    def out_of_focus(photo: Image.Image) -> Image.Image:
        return change(photo).filter(ImageFilter.GaussianBlur(0.005 * max(photo.size)))
    return out_of_focus


def in_green_ink(photo: Image.Image) -> Image.Image:
    """Written with a green pen: the marks take the red and blue light only, the green channel kept at
    the paper's level or above. In luminance the digit keeps about 40 % of its contrast."""
    rgb = np.asarray(photo.convert("RGB")).copy()
    rgb[..., 1] = np.maximum(rgb[..., 1], np.median(rgb[..., 1]))
    return Image.fromarray(rgb)


def in_dim_light(photo: Image.Image) -> Image.Image:
    """Taken in dim light: the phone's gain halves the digit's contrast against the paper and adds grain
    (white noise of 10 grey levels)."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32)
    paper = np.median(rgb.reshape(-1, 3), axis=0)
    grainy = paper - (paper - rgb) / 2 + np.random.default_rng(0).normal(0, 10, rgb.shape[:2] + (1,))
    return Image.fromarray(np.clip(grainy, 0, 255).astype(np.uint8))


def shrunk_as_the_course_does(photo: Image.Image) -> Image.Image:
    """Made grey and resized to 28x28 before it is read, as the course's notebook does to a user's own
    photo (`img.convert("L").resize((28, 28))`): the paper's shading and grain fill a picture too small
    for the background's blocks."""
    return photo.convert("L").resize((28, 28), Image.LANCZOS)


def printed_short(change):
    """`change` (squared or ruled paper) printed short of the photo's edges by 8 % of its size on each side,
    as a notebook leaves a margin unprinted, or a form prints a grid in one part of the sheet."""
    def printed_short_of_the_edges(photo: Image.Image) -> Image.Image:
        lined, plain = np.asarray(change(photo).convert("RGB")), np.asarray(photo.convert("RGB")).copy()
        top, left = round(0.08 * plain.shape[0]), round(0.08 * plain.shape[1])
        plain[top:-top, left:-left] = lined[top:-top, left:-left]
        return Image.fromarray(plain)
    return printed_short_of_the_edges


@pytest.mark.parametrize("change, least", [(on_a_desk, 0.9), (far_on_a_desk, 0.9), (on_a_white_desk, 0.95),
                                           (far_on_a_white_desk, 0.95), (by_a_desk(0.25), 0.9),
                                           (by_a_desk(0.25, 0.2), 0.9), (in_a_box, 0.9), (under_a_shadow, 0.85),
                                           (under_a_hard_shadow(0.4), 0.9),
                                           (under_a_hard_shadow(0.5, top=0.45, light=0.2), 0.85),
                                           (on_squared_paper, 0.9), (on_ruled_paper, 0.95), (underlined, 0.95),
                                           (underlined_touching, 0.95), (printed_short(on_squared_paper), 0.95),
                                           (printed_short(on_ruled_paper), 0.95), (askew(on_squared_paper, 20), 0.85),
                                           (blurred(on_squared_paper), 0.95), (turned(-10), 0.95),
                                           (turned(10), 0.95), (in_green_ink, 0.95), (in_dim_light, 0.97),
                                           (shrunk_as_the_course_does, 0.95)],
                         ids=["desk", "far_on_a_desk", "white_desk", "far_on_a_white_desk", "desk_at_one_side",
                              "desk_at_two_sides", "box", "shadow",
                              "hard_shadow", "shadow_as_dark_as_ink",
                              "squared", "ruled", "underlined", "underlined_touching", "squared_short", "ruled_short",
                              "squared_askew", "squared_blurred",
                              "turned_-10", "turned_+10", "green_ink", "dim_light", "shrunk_to_28x28"])
def test_photos_are_read_as_users_also_take_them(change, least: float, classifier, wild_dir) -> None:
    """Every photo of wild-dev (70), taken as users also take them, reads as the photo itself does but for a few
    (`least` of the photos read right as taken; measured 65, 67, 65, 64, 67, 65, 68, 68, 67, 67, 67, 66, 66, 68 and
    67 of 68; under a hard shadow 65 of 67, under one as dark as the ink 61 of 67, shrunk to 28x28 67 of 67).
    Before, 10 of 70 read right on a desk (the desk was taken for paper and the sheet for a 0-shaped digit) and in
    a box (framed with the digit); a third of the picture on the desk, 52 of 67 (2026-12-07: pencil that the
    reduced copy averaged away left the sheet without marks, a 0's hole was counted as one; 63 now, and on a desk
    61 -> 65); on a white desk 61, a third of the picture 47 (a sheet darker than what it lies on was not looked
    for: its edges were framed with the digit; 66 and 65 now, 2026-12-07); 45 and 47 by a desk at one or two sides,
    the sheet running past the picture's other edges (a sheet was looked for only inside the picture; measured
    2026-12-06 with the default of seed 0 before blocky scans, 35 and 43 with them, then 65 and 65); under the
    shadow 20 (the shadowed border ring turned the polarity), then 49 where grainy or small blurred photos left the
    polarity to that ring (57 on a desk); on squared paper 22 and on ruled paper 53 (the lines were read as
    strokes); underlined 55 (the line was framed with the digit: a 7 read as 1, a 9 as 1 or 2), and 62 with the line
    touching the digit (one blob with it); 61 on a desk where a sheet's grid ended at its edge, inside the picture
    (not taken for a ruling: the sheet is now read alone); on squared and ruled paper printed short of the edges 31
    and 59 (a ruling had to reach both edges, as a stroke does not; now three light lines or more may stop short of
    them, a grid's rows and columns counted together: in a box 58, where squared photos' few lines ended short of
    the widened picture's edges); turned 10 degrees either way 64 and 64 (a grid turned more than 6 degrees was not
    looked for, now 11), and on squared paper turned 20 degrees 13 (61 now: since 2026-12-07 up to 27 degrees,
    `preprocess.MAX_TILT`), and on squared paper a little out of focus 56 (the blurred lines were too thick for
    a ruling; 66 now); in green ink 63 (luminance keeps 40 % of a green pen's contrast: now the colour channel
    that shows the marks clearly more strongly is read); in dim light 64 (the grain broke small photos' strokes into
    specks: now a grainy picture is smoothed first); under a hard shadow over the left 40 % (the light cut to half)
    52 (its edge was kept as a line of ink: `preprocess.under_shadows` keeps it out), and over the lower-left corner
    with the light cut to a fifth, the shadow as dark as the ink in the light, 32, now 61 (what is wide and as dark
    as the ink was taken for a bold stroke and its edge kept; the digit's strokes under the shadow, darker still,
    now tell it from one); shrunk to 28x28 as the course does 52 (one level of paper for a picture too small for
    blocks: the darker corner read as ink, faint strokes under the noise floor; `preprocess.small_background`). On
    small blurred photos a grid
    of 1-px lines is too faint along its length to be found; a 3 whose tail comes down onto the line looks like a 2
    on its base and keeps it."""
    rows = singles(wild_dir, "photo")

    taken = changed = 0
    for row in rows:
        with Image.open(wild_dir / row["file"]) as photo:
            photo = ImageOps.exif_transpose(photo)
            taken += reads_right(classifier, photo, row["label"])
            changed += reads_right(classifier, change(photo), row["label"])
    assert len(rows) == 70 and taken >= 66 and changed >= least * taken, (taken, changed)


def pages_read_exactly(classifier, wild_dir: Path, changes) -> list[bool]:
    """Whether each page of wild-dev (5), changed by each of `changes` in turn, reads exactly as written."""
    read = []
    for row in [row for row in wild.rows_of(wild_dir, every=1) if row["kind"] == "multi"]:
        with Image.open(wild_dir / row["file"]) as page:
            page = ImageOps.exif_transpose(page)
            page.load()
        for change in changes:
            read.append(reading.read(classifier, change(page), page=True).text == "\n".join(row["lines"].split()))
    return read


@pytest.mark.parametrize("grid", [True, False], ids=["squared", "ruled"])
def test_pages_on_squared_and_ruled_paper_are_read(grid: bool, classifier, wild_dir) -> None:
    """Every page of wild-dev (5, up to 3 lines of digits), printed with a grid of 40-px squares or lines
    60 px apart, 2 px thick, turned 2 degrees, reads exactly as written, and so does each turned 20 degrees
    either way. Before, no page read on squared paper and 1 on ruled paper: a grid is one blob with the
    digits, a ruling joins a line's digits. Then, turned 20 degrees, 3 and 3 on squared paper, 2 and 2 on
    ruled: rulings were looked for up to 11 degrees."""
    def printed(page: Image.Image) -> Image.Image:
        return printed_lines(page, 40.0 if grid else 60.0, 2.0, GRID if grid else RULING, 2.0, grid)
    read = pages_read_exactly(classifier, wild_dir, [printed, askew(printed, -20), askew(printed, 20)])
    assert len(read) == 15 and all(read), read


def with_a_margin_line(picture: Image.Image) -> Image.Image:
    """The paper widened on the left by 12 %, a notebook's red margin line drawn down it at 6 %, a 40th of the
    writing's size wide: printed edge to edge, as dark as a pen in grey, where a ruling is light."""
    rgb = picture.convert("RGB")
    widened = Image.new("RGB", (rgb.width + round(0.12 * rgb.width), rgb.height), paper_colour(picture))
    widened.paste(rgb, (widened.width - rgb.width, 0))
    x = round(0.06 * widened.width)
    ImageDraw.Draw(widened).line([(x, 0), (x, widened.height)], fill=(220, 70, 70),
                                 width=max(1, round(digit_pixels(picture)[2] / 40)))
    return widened


def test_pages_with_a_margin_line_are_read(classifier, wild_dir) -> None:
    """wild-dev's pages (5) with a margin line down the left: 4 read exactly. Before, 2 did: the line was read
    as a 1 before the digits, or taken as one written line's height, the page's, so every digit was too short
    to be read (`preprocess.without_printed_lines`). Still misread: a page whose light blue digits are specks
    beside the red line's strong pixels."""
    read = pages_read_exactly(classifier, wild_dir, [with_a_margin_line])
    assert len(read) == 5 and sum(read) >= 4, read


def test_pages_by_a_desk_are_read(classifier, wild_dir) -> None:
    """Every page of wild-dev (5) photographed near, running past the picture's top and right edges,
    with a dark desk along its left side (a quarter of its width), and along its left and bottom sides
    (a fifth of its height), reads exactly as written. Before, none did with the desk at its left, and
    one with the desk at two sides: a sheet was looked for only inside the picture, the desk around
    it; the desk's edge was kept as ink, framed with the digits. Digits that the picture's edge cuts are
    writing, not desk."""
    read = pages_read_exactly(classifier, wild_dir, [by_a_desk(0.25, turn=0.0), by_a_desk(0.25, 0.2, turn=0.0)])
    assert len(read) == 10 and all(read), read


def test_pages_on_a_desk_are_read(classifier, wild_dir) -> None:
    """wild-dev's pages (5) on a mid-grey desk, a quarter of their size around them: all 5 read exactly;
    a third of the picture on a dark desk: 4. Before (2026-12-07, evening), 4 and 0: digits written up to
    the sheet's edge (a canvas page cut tight: its 4 and 9) joined the desk and were painted out with it,
    and a page that small held no marks on the 128-px copy the desk is found on. Still misread: a strip
    of canvas whose bold "2026" fills it, as a bold light digit's holes fill its outline."""
    read = pages_read_exactly(classifier, wild_dir, [on_a_grey_desk, far_on_a_desk])
    assert len(read) == 10 and all(read[0::2]) and sum(read[1::2]) >= 4, read


def test_pages_on_a_white_desk_are_read(classifier, wild_dir) -> None:
    """wild-dev's pages (5) on a white table, lighter than the grey paper of its two photographed pages: all
    read exactly, a quarter of their size around them and a third of the picture. Before (2026-12-07), 4 and 3:
    a sheet darker than the desk was not looked for; its edges were framed with the digits as strokes
    ("0111" for "134678 / 912532")."""
    read = pages_read_exactly(classifier, wild_dir, [on_a_white_desk, far_on_a_white_desk])
    assert len(read) == 10 and all(read), read


def test_a_hard_shadow_is_not_taken_for_a_desk(classifier, wild_dir) -> None:
    """Every page of wild-dev (5) under a hard shadow, the light cut to half over its left 40 %, reads
    exactly as written: the shadowed part is the sheet, not a desk to cut away (`preprocess.a_desk`).
    With the sharp-edge check alone, none did: the shadow's edge is as sharp as a desk's, but digits
    are written in it."""
    read = pages_read_exactly(classifier, wild_dir, [under_a_hard_shadow(0.4)])
    assert len(read) == 5 and all(read), read


def test_pages_under_a_hard_shadow_over_a_corner_are_read(classifier, wild_dir) -> None:
    """Every page of wild-dev (5) under a sharp shadow over its lower-left corner (the left half, below
    45 % of its height; the light cut to 45 %, and to a fifth: as dark as the ink in the light) reads
    exactly as written. Before, none did: blocks that straddle the shadow's edge took a level between the
    light and the shadow, so the paper just inside the shadow stood out as ink along its two edges, joined
    to the digits they crossed. Then none did under the deeper shadow, taken for a bold stroke."""
    read = pages_read_exactly(classifier, wild_dir, [under_a_hard_shadow(0.5, top=0.45, light=light)
                                                     for light in (0.45, 0.2)])
    assert len(read) == 10 and all(read), read


def test_pages_turned_are_read(classifier, wild_dir) -> None:
    """Every page of wild-dev (5) turned 5, 10, 15 and 25 degrees either way reads exactly as written
    (40 readings). Before, 10 of the 20 at 5 and 10 degrees did: a line's digits were banded by the
    height of its tallest, so a long line that climbed (two pages' writers already climb 1-3 degrees)
    split in two, its last digits read as a line above it. Then 8 of the 20 at 15 and 25 did: lines
    were looked for up to 11 degrees, and the digits framed as turned as the page."""
    read = pages_read_exactly(classifier, wild_dir, [turned(degrees) for degrees in (-25, -15, -10, -5, 5, 10, 15, 25)])
    assert len(read) == 40 and all(read), read


def test_one_writers_pages_turned_read_as_level(classifier, wild_dir) -> None:
    """Pages of 1 to 3 lines (50), each line a number of 2 to 5 of one writer's canvas drawings (80 px
    tall, 20 px apart), turned 5 and 20 degrees either way read exactly about as often as level:
    measured 41 level, 40 and 40 turned 5 degrees, 41 and 38 turned 20. Before, 40 level, 42 and 33
    turned 5, 38 and 13 turned 20: past 11 degrees lines fell apart, and digits were framed as turned
    as the page (the model learned digits turned up to 10 degrees, but these writers' digits turned 5
    degrees clockwise read worse than level: a page is now turned level from 3 degrees)."""
    numbers = one_writers_numbers(wild_dir, 150, lambda rng: rng.integers(2, 6))
    read = {0: 0, 5: 0, -5: 0, 20: 0, -20: 0}
    for k in range(50):
        lines = numbers[3 * k:3 * k + 1 + k % 3]
        rows = [written_in_a_row([drawn_ink(wild_dir / row["file"], 80) for row in number], 20) for number in lines]
        page = Image.new("L", (max(row.width for row in rows), 40 + sum(row.height - 40 for row in rows)), 255)
        for i, row in enumerate(rows):
            page.paste(row, (0, sum(above.height - 40 for above in rows[:i])))
        written = "\n".join("".join(row["label"] for row in number) for number in lines)
        for degrees in read:
            read[degrees] += reading.read(classifier, turned(degrees)(page), page=True).text == written
    assert read[0] >= 38 and min(read.values()) >= read[0] - 5, read


@pytest.mark.parametrize("gap", [0.15, 0.0], ids=["below", "touching"])
def test_pages_with_each_line_underlined_are_read(gap: float, classifier, wild_dir) -> None:
    """Every page of wild-dev (5) with a line drawn under each written line, as a sum is ruled off or
    answers are underlined (black, a fifteenth of the line's height thick, `gap` of it below the
    digits or along their lowest point, 10 % beyond them), reads exactly as written. Before, 3 of 5
    did with the gap: the black line, darker and longer than the blue digits, made most of them
    specks (134678 / 912532 read 3 / 9); none touching: the line and a line's digits were one blob,
    cut into as many digits as its width holds (2026 read 322602)."""
    rows = [row for row in wild.rows_of(wild_dir, every=1) if row["kind"] == "multi"]
    read = []
    for row in rows:
        with Image.open(wild_dir / row["file"]) as page:
            page = ImageOps.exif_transpose(page).convert("RGB")
        draw = ImageDraw.Draw(page)
        for line in reading.read(classifier, page, page=True).lines:
            left, top = min(digit.box[0] for digit in line), min(digit.box[1] for digit in line)
            right, bottom = max(digit.box[2] for digit in line), max(digit.box[3] for digit in line)
            height = bottom - top
            draw.line((left - 0.1 * height, bottom + gap * height, right + 0.1 * height, bottom + gap * height),
                      fill=(30, 30, 30), width=max(2, round(height / 15)))
        read.append(reading.read(classifier, page, page=True).text == "\n".join(row["lines"].split()))
    assert len(rows) == 5 and all(read), read


@pytest.mark.parametrize("adjoining", [False, True], ids=["apart", "adjoining"])
def test_pages_with_each_digit_in_a_box_are_read(adjoining: bool, classifier, wild_dir) -> None:
    """Every page of wild-dev (5) with each digit in a box of its own, as on a form: black, an
    eighteenth of the line's height thick, 15 % of it around the digit or less, boxes kept apart, or
    adjoining (a comb: one frame around the line, a wall halfway between digits). The page is widened
    by a sixth of its height first, its edge repeated, so that they fit. 4 read exactly as written:
    2026's digits nearly touch, so boxes apart are drawn through them and walls touch them. Before,
    none: each box was read as a digit (an 8 or a 0) and its digit dropped or read beside it, a comb
    as digits cut from its width."""
    rows = [row for row in wild.rows_of(wild_dir, every=1) if row["kind"] == "multi"]
    read = []
    for row in rows:
        with Image.open(wild_dir / row["file"]) as page:
            page = np.asarray(ImageOps.exif_transpose(page).convert("RGB"))
        pad = page.shape[0] // 6
        page = Image.fromarray(np.pad(page, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
        lines = reading.read(classifier, page, page=True).lines
        spans = [(min(digit.box[1] for digit in line), max(digit.box[3] for digit in line)) for line in lines]
        draw = ImageDraw.Draw(page)
        for k, (line, (top, bottom)) in enumerate(zip(lines, spans)):
            width = max(2, round((bottom - top) / 18))
            gap = 0.15 * (bottom - top)
            up = min(gap, (top - spans[k - 1][1]) / 2 - width) if k > 0 else gap
            down = min(gap, (spans[k + 1][0] - bottom) / 2 - width) if k + 1 < len(lines) else gap
            if adjoining:
                draw.rectangle((line[0].box[0] - gap, top - up, line[-1].box[2] + gap, bottom + down),
                               outline=(20, 20, 20), width=width)
                for a, b in zip(line, line[1:]):
                    draw.line(((a.box[2] + b.box[0]) / 2, top - up, (a.box[2] + b.box[0]) / 2, bottom + down),
                              fill=(20, 20, 20), width=width)
                continue
            for j, digit in enumerate(line):
                left = min(gap, (digit.box[0] - line[j - 1].box[2]) / 2 - width) if j > 0 else gap
                right = min(gap, (line[j + 1].box[0] - digit.box[2]) / 2 - width) if j + 1 < len(line) else gap
                draw.rectangle((digit.box[0] - left, top - up, digit.box[2] + right, bottom + down),
                               outline=(20, 20, 20), width=width)
        read.append(reading.read(classifier, page, page=True).text == "\n".join(row["lines"].split()))
    assert len(rows) == 5 and sum(read) >= 4, read


def drawn_ink(path: Path, height: int) -> np.ndarray:
    """A canvas drawing's ink (0..1, dark strokes on light), cut to its strokes and scaled `height` px tall."""
    with Image.open(path) as drawing:
        gray = np.asarray(drawing.convert("L"), dtype=np.float32)
    ink = np.clip((gray.max() - gray) / max(gray.max() - gray.min(), 1.0), 0.0, 1.0)
    rows, columns = np.nonzero(ink > 0.3)
    ink = ink[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    return np.asarray(Image.fromarray((255 * ink).astype(np.uint8)).resize((width, height), Image.BICUBIC)) / 255.0


def written_in_a_row(inks: list[np.ndarray], gap: int) -> Image.Image:
    """The digits side by side, dark on white, each `gap` px right of the last at the rows where they come
    closest: at 0 they touch (a stroke of one meets a stroke of the next)."""
    height = inks[0].shape[0]
    row = np.zeros((height + 80, 80 + sum(ink.shape[1] + gap for ink in inks)))
    reach = np.full(height, -np.inf)  # the rightmost stroke so far, per row
    for ink in inks:
        strokes = ink > 0.3
        starts = np.where(strokes.any(1), strokes.argmax(1), np.inf)
        left = 40 if np.isinf(reach).all() else int(np.max(reach - starts)) + 1 + gap
        row[40:40 + height, left:left + ink.shape[1]] = np.maximum(row[40:40 + height, left:left + ink.shape[1]], ink)
        ends = np.where(strokes.any(1), left + ink.shape[1] - 1 - strokes[:, ::-1].argmax(1), -np.inf)
        reach = np.maximum(reach, ends)
    row = row[:, :int(np.flatnonzero(row.any(0))[-1]) + 40]
    return Image.fromarray((255 - 255 * row).astype(np.uint8))


def one_writers_numbers(wild_dir: Path, count: int, digits) -> list[list[dict]]:
    """About `count` numbers, each of `digits(rng)` canvas drawings by one writer, writers in proportion."""
    rows = singles(wild_dir, "canvas")
    writers: dict[str, list[dict]] = {}
    for row in rows:
        writers.setdefault(row["source"], []).append(row)
    rng = np.random.default_rng(0)
    return [[mine[k] for k in rng.choice(len(mine), digits(rng), replace=False)]
            for mine in writers.values() for _ in range(count * len(mine) // len(rows) + 1)]


def test_numbers_written_with_digits_touching_are_read(classifier, wild_dir) -> None:
    """Numbers of 2 to 4 digits (82), each of one writer's canvas drawings, 120 px tall: written touching,
    most read as they do written apart (gap of 12 px). Measured: 58 touching, 74 apart, most misreads
    of both the flagged writer's 1s. Before, 41 read touching: a piece wider than 1.35 line heights
    was cut into even parts; now the model judges where (`layout.judged_cuts`). The models of the
    standard recipe swing with the seed (2026-12-06, twelve runs with and without blocky scans): 50 to 63
    touching, 72 to 79 apart; the lowest ratio, 50 of 72 (0.69), is the default of seed 0 with blocky
    scans. 0.65 keeps a margin under it and fails the even cuts of before (41 of 74, 0.55)."""
    numbers = one_writers_numbers(wild_dir, 80, lambda rng: rng.integers(2, 5))
    read = {0: 0, 12: 0}
    for number in numbers:
        inks = [drawn_ink(wild_dir / row["file"], 120) for row in number]
        for gap in read:
            read[gap] += reading.read(classifier, written_in_a_row(inks, gap), page=True).text == \
                "".join(row["label"] for row in number)
    assert len(numbers) == 82 and read[12] >= 70 and read[0] >= 0.65 * read[12], read


def test_a_dash_between_digits_is_not_read_as_one(classifier, wild_dir) -> None:
    """Numbers of 4 digits (42) of one writer's canvas drawings, 120 px tall and 30 px apart, read with a
    dash between the 2nd and 3rd (a date, a phone number): no dash read as a digit, and nearly as many
    read right as without it. Measured 37 with it, 36 without; since the steeper flags, 36 and 40, none
    read longer (a 1 that the dash touches is read with it, as 2 or 4 twice, where the model before
    read 1 and 7). Before 16c27b3 the dash joined the digit beside it (a loose stroke), and where that
    made the piece wider than 1.35 line heights, the even cut gave the dash a part of its own, read as
    a digit: 32 with it then; with today's default, 23, and 16 numbers read a digit longer."""
    read = {"apart": 0, "dash": 0, "longer": 0}
    for number in one_writers_numbers(wild_dir, 40, lambda rng: 4):
        inks = [drawn_ink(wild_dir / row["file"], 120) for row in number]
        written = "".join(row["label"] for row in number)
        left, right = written_in_a_row(inks[:2], 30), written_in_a_row(inks[2:], 30)
        page = Image.new("L", (left.width + right.width, left.height), 255)
        page.paste(left, (0, 0))
        page.paste(right, (left.width - 10, 0), mask=Image.eval(right, lambda v: 255 - v))
        ImageDraw.Draw(page).line((left.width - 35, 100, left.width + 5, 100), fill=0, width=8)
        read["apart"] += reading.read(classifier, written_in_a_row(inks, 30), page=True).text == written
        text = reading.read(classifier, page, page=True).text
        read["dash"] += text == written
        read["longer"] += len(text) > len(written)
    assert read["apart"] >= 30 and read["longer"] <= 2 and read["dash"] >= read["apart"] - 4, read


def test_bench_wild_refuses_a_folder_without_labels(fast_export, tmp_path, capsys) -> None:
    assert main(["bench", "wild", "--model", str(fast_export), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"digitpi: error: cannot read {tmp_path / 'labels.csv'}") and err.count("\n") == 1
