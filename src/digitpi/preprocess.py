"""Turn any picture of a digit (photo, scan, canvas drawing) into the 28x28 image an MNIST model expects.

MNIST digits are white ink on black, size-normalized so the longer side of the ink is 20 px (aspect
ratio kept, anti-aliased), 2-3 px thick strokes, pasted into 28x28 with the centre of mass at the
centre (the numbers are `digitpi.contract`'s). A phone photo of dark ink on paper with a shadow
across it, or a thin pen on a large canvas, is none of that; this module bridges the gap, with
numpy and Pillow only (it runs on the Raspberry Pi, beside the runtime). Where the digits of a
whole page are is `digitpi.layout`'s job.

Public API, used by `digitpi predict`, the runtime user and `digitpi serve`:
    load_image(source) -> PIL.Image          path, bytes, file object, PIL image or array; upright, size-capped
    to_mnist(source) -> uint8 (28, 28)       one digit, ready for `Classifier.predict`
Every failure is an `ImageError` (a `UserError`) with a one-line message; a blank page is a
`NoDigitError`. Messages start with the file's path, or with the `name` the caller gives the
source (`digitpi predict -` says "standard input"); other sources go unnamed.

Memory is bounded by pixels, not by file size: a PNG of a few hundred KB can hold 9400x9400 RGBA
pixels (674 MB on the way to grey). A picture is decoded at full size only when that fits
`Settings.decode_budget` (JPEGs are decoded at 1/2 to 1/8 scale first); anything larger is refused
before it is decoded."""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from digitpi import UserError, one_line
from digitpi.contract import BOX_SIZE, CENTRE, IMAGE_SIZE, WHITE

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the stored pixels are turned
JPEG = ("JPEG", "MPO")  # formats Pillow can decode at 1/2, 1/4 or 1/8 scale (MPO: a camera's JPEG)
Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray


@dataclass(frozen=True)
class Settings:
    max_pixels: int = 100_000_000  # larger images are refused as decompression bombs (a 108-MP phone photo fits)
    decode_budget: int = 128 * 2**20  # bytes one picture may hold while decoded at full size (see `decode_cost`)
    max_file_bytes: int = 64 * 2**20  # standard input and uploads held in memory: a 108-MP JPEG is about 30 MB
    load_side: int = 1024  # load_image decodes/reduces to this longer side or less: plenty for a row of digits
    digit_side: int = 256  # to_mnist works at this longer side or less: 20 px of output need far fewer
    blocks: int = 16  # background grid: blocks along the longer side (3x3 blocks are wider than a stroke)
    shadow_width: float = 0.2  # marks wider than this share of the picture are paper (a shadow), not strokes...
    shadow_step: float = 0.1  # ...whose edge counts where it stands this share of the contrast over the blocks
    min_contrast: float = 12.0  # grey levels (of 255) between paper and ink below which nothing is written
    max_grain: float = 1 / 40  # grainier pictures (pixel noise over this share of the contrast) are smoothed
    min_snr: float = 6.0  # ink must stand this many noise standard deviations above the background
    noise_floor: float = 3.0  # background noise (in standard deviations) cut away before scaling ink to 1
    ink_level: float = 60.0  # percentile of the ink pixels' values taken as full-strength ink
    faint_ink: float = 0.1  # fainter pixels (blur and JPEG halo) neither belong to a blob nor join two
    strong_ink: float = 0.6  # a blob's size is its pixels at least this dark: shadow edges have few
    min_piece: float = 0.05  # ink blobs smaller than this fraction of the largest one are specks, not digit
    min_digit: float = 0.015  # the digit's longer side must be at least this fraction of the image's
    stroke: float = 2.0  # px at 28x28: thinner strokes are thickened to this (MNIST training digits' median: 2.1)
    fine: int = 4  # stroke width is measured and mended at this many times the 20-px box
    margin: float = 0.2  # a digit cut tight is read again with this share of its picture around it (MNIST: 4 px on 20)


SETTINGS = Settings()
MAD_SIGMA = 0.6745  # a normal distribution's median absolute deviation, in standard deviations


class ImageError(UserError):
    """The input cannot be read as a picture of a digit; the message is one line that says why."""


class NoDigitError(ImageError):
    """The picture is readable but blank or nearly so."""


# ---------------------------------------------------------------- reading files


def source_name(source: Source, name: str | None = None) -> str | None:
    """What messages call `source`: the caller's `name` if given, else a path as written, else nothing."""
    if name is not None:
        return name
    return str(source) if isinstance(source, (str, os.PathLike)) else None


def about(name: str | None, message: str) -> str:
    """`message` about the source called `name` ("photo.jpg: not an image ..."), or plain if it has no name."""
    return f"{name}: {message}" if name else message


def quiet_but_for_bombs() -> None:
    """Inside `warnings.catch_warnings()`: Pillow's notes on odd files ("Corrupt EXIF data") are not
    printed, as the picture decodes or fails with one line anyway; a decompression bomb is an error."""
    warnings.simplefilter("ignore")
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def open_image(source: Source, s: Settings = SETTINGS, name: str | None = None) -> Image.Image:
    """Image.open with every Pillow failure (and any image over `max_pixels`) turned into ImageError."""
    name = source_name(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(about(name, "empty file, not an image"))
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(about(name, "is a folder, not an image"))
        if not path.exists():
            raise ImageError(about(name, "no such file"))
        if not path.is_file():  # a FIFO or a device: reading it may never end
            raise ImageError(about(name, "not a regular file"))
        if path.stat().st_size == 0:
            raise ImageError(about(name, "empty file, not an image"))
    try:
        with warnings.catch_warnings():
            quiet_but_for_bombs()
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(about(name, "image too large (decompression bomb?)")) from None
    except UnidentifiedImageError:
        raise ImageError(about(name, "not an image (no known image format)")) from None
    except Exception as e:  # Pillow raises many types on foreign or corrupt bytes
        unread = isinstance(e, OSError) and e.errno  # the system's refusal (permission) has a number; Pillow's not
        raise ImageError(about(name, f"cannot read it ({e.strerror})" if unread
                               else f"not an image ({one_line(e, 100)})")) from None
    width, height = image.size
    if width * height > s.max_pixels or width == 0 or height == 0:
        image.close()  # the file it holds open
        limit = f"the limit is {s.max_pixels:,} pixels"
        raise ImageError(about(name, f"image too large ({width}x{height} px; {limit})" if width and height
                               else f"image has no pixels ({width}x{height})"))
    return image


def load_image(source: Source, s: Settings = SETTINGS, side: int | None = None,
               name: str | None = None) -> Image.Image:
    """Read `source` into an upright, fully decoded grey image whose longer side is at most `side`
    (default `s.load_side`; larger images are shrunk by a whole factor, box-filtered).

    JPEGs are decoded at a reduced scale (`draft`), so a 12-MP photo costs a few milliseconds, not a
    hundred. A file whose full-size decode would exceed `s.decode_budget` is refused before it is
    decoded. Arrays are taken as grey levels (or RGB/RGBA) as they are.
    """
    return load_upright(source, s, side, name)[0]


# Orientations of EXIF tag 0x0112 -> how the stored pixels are turned upright (as ImageOps.exif_transpose)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def load_upright(source: Source, s: Settings = SETTINGS, side: int | None = None,
                 name: str | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image`'s image, and the (width, height) of the picture as its viewer sees it (full size,
    EXIF orientation applied): what positions on the page are measured in."""
    side = side or s.load_side
    if isinstance(source, np.ndarray):
        image = array_image(source)
        return shrink(image, side), image.size
    image = opened = source if isinstance(source, Image.Image) else open_image(source, s, name)
    name = source_name(source, name)
    if 0 in image.size:  # a file's is refused as it opens; a Pillow image's only here
        raise ImageError(about(name, f"image has no pixels ({image.width}x{image.height})"))
    try:
        with warnings.catch_warnings():
            quiet_but_for_bombs()
            width, height = stored = image.size
            if image.format in JPEG:  # DCT scaling: decode only 1/2, 1/4 or 1/8 of it, longer side >= side
                longer = max(image.size)
                image.draft("L", (max(1, image.width * side // longer), max(1, image.height * side // longer)))
            if not isinstance(source, Image.Image):  # the caller's own image is decoded already
                cost = decode_cost(image)
                if cost > s.decode_budget:
                    raise ImageError(about(name, f"image too large to decode ({image.width}x{image.height} px "
                                                 f"{image.mode} needs {cost / 2**20:.0f} MB, the limit is "
                                                 f"{s.decode_budget / 2**20:.0f} MB): send a smaller picture"))
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)  # after the check: a PNG's loads the image
            if orientation in (5, 6, 7, 8):  # stored turned by 90 degrees
                width, height = height, width
            image.load()
            scale = draft_scale(image)
            if scale > 1 and (image.width * scale, image.height * scale) != stored:
                # a drafted JPEG whose size is no multiple of the scale ends in a column (or row) of
                # partial pixels that libjpeg leaves half dark: a false stroke along the picture's edge
                image = image.crop((0, 0, max(1, stored[0] // scale), max(1, stored[1] // scale)))
            image = reduced_gray(image, side)
            if orientation in UPRIGHT:
                image = image.transpose(UPRIGHT[orientation])
            if image is opened and opened is not source:
                image = image.copy()  # small already: the opened one is closed below
    except ImageError:
        raise
    except Exception as e:  # truncated data, broken EXIF, a mode Pillow cannot convert...
        raise ImageError(about(name, f"cannot decode image ({one_line(e, 100)})")) from None
    finally:
        if opened is not source:
            opened.close()  # the file, which Pillow leaves open when decoding fails (or the format is ICO)
    return image, (width, height)


# Bytes per pixel a decoded picture holds at its peak on the way to a small grey image: Pillow's own
# storage (1 byte for 1/L/P, 2 for 16-bit, 4 for the rest), plus the one full-size copy its mode
# needs (to L or F where `reduce` cannot work on it; premultiplied alpha, as `reduce` makes).
PEAK_BYTES = {"L": 1, "1": 2, "P": 2, "I;16": 6, "I;16L": 6, "I;16B": 6, "I;16N": 6, "LA": 8, "RGBA": 8,
              "PA": 12}
ALPHA_PALETTE = 9  # a palette with a transparent colour: 1 + 4 (RGBA) + 4 (premultiplied)


def decode_cost(image: Image.Image) -> int:
    """Bytes that decoding `image` (opened, not yet loaded) at its present size would take at its peak.

    A progressive JPEG is decoded from whole-image tables of DCT coefficients (2 bytes each, per
    component at its sampling), whatever scale it is drafted to."""
    pixels = image.width * image.height
    if image.mode == "P" and "transparency" in image.info:
        cost = pixels * ALPHA_PALETTE
    else:
        cost = pixels * PEAK_BYTES.get(image.mode, 4)
    layers = getattr(image, "layer", None)  # a JPEG's components: (id, h, v, table)
    if image.format in JPEG and image.info.get("progressive") and layers:
        full = draft_scale(image)
        h_max, v_max = max(c[1] for c in layers) or 1, max(c[2] for c in layers) or 1
        share = sum(c[1] * c[2] for c in layers) / (h_max * v_max)  # 1.5 for 4:2:0 colour
        cost += int(pixels * full * full * 2 * share)
    return cost


def draft_scale(image: Image.Image) -> int:
    """By how much `draft` told a JPEG to shrink while decoding (1, 2, 4 or 8; 1 for other formats)."""
    return image.decoderconfig[0] if image.format in JPEG and image.decoderconfig else 1


def reduced_gray(image: Image.Image, side: int) -> Image.Image:
    """A decoded picture reduced to `side` *before* it becomes grey, so the full-size copies are the
    few `PEAK_BYTES` counts: modes `reduce` cannot take are made L, F or RGBA first."""
    if image.mode in ("1", "P", "PA") or image.mode.startswith("I;16"):
        alpha = image.mode == "PA" or "transparency" in image.info
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "palette images with transparency should be RGBA"
            image = image.convert("RGBA" if alpha else "F" if image.mode.startswith("I;16") else "L")
    return shrink(gray_image(shrink(image, side)), side)


def shrink(image: Image.Image, side: int) -> Image.Image:
    """`image` reduced by the smallest whole factor that brings its longer side to `side` or less."""
    factor = -(-max(image.size) // side)
    return image.reduce(factor) if factor > 1 else image  # box filter: anti-aliased, and fast (alpha premultiplied)


def reduced(values: np.ndarray, side: int) -> np.ndarray:
    """float32 `values` shrunk (box-filtered, by a whole factor) to a longer side of `side` or less."""
    return np.asarray(shrink(Image.fromarray(np.asarray(values, dtype=np.float32), "F"), side))


def array_image(array: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, 3) or (H, W, 4) array as a grey image. uint8 is grey levels, as a picture file
    holds them ("L"); other types are taken as they are and stretched to their own range (`gray_array`),
    which would make the grain of blank paper in uint8 pass for ink."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8 and array.size:
        return gray_image(Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA"))
    if array.ndim == 2 and array.dtype == np.uint8 and array.size:
        return Image.fromarray(array, "L")
    if array.ndim != 2 or array.size == 0 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ImageError(f"array of shape {array.shape} and dtype {array.dtype} is not an image")
    with np.errstate(over="ignore"):  # float64 beyond float32's range: infinite, then 0 as below
        return Image.fromarray(np.nan_to_num(array.astype(np.float32), posinf=0.0, neginf=0.0), "F")


def gray_image(image: Image.Image) -> Image.Image:
    """Any Pillow mode as "L" (8-bit) or "F" (wider ranges), transparency composited over paper."""
    if image.mode in ("L", "F"):
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        return image.convert("F")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "palette images with transparency should be RGBA"
            rgba = image.convert("RGBA")
        level = transparent_paper(rgba)
        paper = Image.new("RGBA", image.size, (level, level, level, 255))
        return colour_gray(Image.alpha_composite(paper, rgba).convert("RGB"))
    return colour_gray(image if image.mode == "RGB" else image.convert("RGB"))  # LAB, HSV: no direct path to L


def colour_gray(rgb: Image.Image, clearly: float = 1.25) -> Image.Image:
    """An RGB picture as grey: its luminance, unless one colour channel shows the marks on light paper
    `clearly` times as strongly. Green, cyan or red ink absorbs one or two channels fully and the others
    hardly: in luminance a green pen keeps 40 % of its contrast. Strength is the share of the paper's
    light (its median level) that the darkest marks absorb, on a copy 64 px long or less, box-filtered:
    black ink absorbs the same share in every channel, whatever the paper's tint, so black ink, and blue
    ballpoint (which luminance sees nearly as well as the red channel), stay in luminance."""
    small = np.asarray(shrink(rgb, 64), dtype=np.float32).reshape(-1, 3)
    levels = np.concatenate([small, small @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)], axis=1)
    paper = np.median(levels, axis=0)
    if paper[3] < 128:  # dark paper: light ink (a canvas, chalk), which luminance sees
        return rgb.convert("L")
    absorbed = np.where(paper >= 128, (paper - levels.min(axis=0)) / np.maximum(paper, 1), 0.0)
    best = int(np.argmax(absorbed[:3]))  # a channel the paper itself absorbs (yellow paper's blue) shows nothing
    if absorbed[best] < clearly * absorbed[3]:
        return rgb.convert("L")
    return rgb.getchannel(best)


def transparent_paper(rgba: Image.Image) -> int:
    """The grey level to show through transparency: white, unless nothing opaque is dark. Then the
    opaque part is light ink (a web canvas drawn in white and never filled, its background only CSS),
    which over white would vanish. A photo whose paper was made partly transparent keeps white: its ink is dark."""
    sample = np.asarray(rgba.resize((min(rgba.width, 256), min(rgba.height, 256)), Image.NEAREST), dtype=np.float32)
    opaque = sample[sample[..., 3] >= 128, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return 0 if opaque.size and (opaque < 128).mean() < 0.01 else 255


# ---------------------------------------------------------------- from grey levels to ink


def gray_array(image: Image.Image, side: int) -> np.ndarray:
    """float32 (H, W) grey levels with the longer side reduced to `side` or less."""
    image = shrink(gray_image(image), side)
    gray = np.asarray(image, dtype=np.float32)
    if image.mode == "F":  # 16-bit scans, float arrays: bring to the 0..255 scale the thresholds assume
        gray = np.nan_to_num(gray, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(gray.min()), float(gray.max())  # float64: a range of 1e-37 or 4e38 overflows float32
        gray = ((gray.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.float32) if high > low \
            else np.zeros_like(gray)
    return gray


def thin(values: np.ndarray, count: int = 4096) -> np.ndarray:
    """About `count` pixels of `values` on a regular grid: statistics of a whole image at 1 % of the cost."""
    step = max(1, round((values.size / count) ** 0.5))
    return values[::step, ::step]


def extremes(gray: np.ndarray, count: int = 4096, reached_by: int = 6) -> tuple[float, float]:
    """The darkest and lightest grey levels that at least `reached_by` of about `count` blocks reach
    (their minima and maxima). A 1-px pen line across a page or a digit a twentieth of its width
    darkens more blocks than that, a speck of dust fewer."""
    k = max(1, min(round((gray.size / count) ** 0.5), *gray.shape))
    minima = block_extreme(gray, k, np.minimum).ravel()
    maxima = block_extreme(gray, k, np.maximum).ravel()
    nth = min(reached_by, minima.size) - 1
    return float(np.partition(minima, nth)[nth]), float(-np.partition(-maxima, nth)[nth])


def block_extreme(gray: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """`op` (np.minimum or np.maximum) over each k x k block of `gray` (edge pixels past whole blocks
    dropped): k elementwise passes over rows, then k over columns, 25x faster than reducing a block view."""
    h, w = (gray.shape[0] // k) * k, (gray.shape[1] // k) * k
    rows = gray[0:h:k, :w].copy()
    for i in range(1, k):
        op(rows, gray[i:h:k, :w], out=rows)
    blocks = rows[:, 0::k].copy()
    for j in range(1, k):
        op(blocks, rows[:, j::k], out=blocks)
    return blocks


def ring(gray: np.ndarray) -> np.ndarray:
    """The pixels of a ring 1/16 of the image wide along its edges: where the paper shows."""
    h, w = gray.shape
    bh, bw = max(1, h // 16), max(1, w // 16)
    return np.concatenate([gray[:bh].ravel(), gray[-bh:].ravel(), gray[:, :bw].ravel(), gray[:, -bw:].ravel()])


def ring_median(edge: np.ndarray) -> float:
    """The grey level of the paper: the median of the border ring (about 2,048 of its pixels)."""
    return float(np.median(edge[::max(1, edge.size // 2048)]))


def dark_ink(gray: np.ndarray, low: float, high: float, s: Settings = SETTINGS) -> bool:
    """Whether the ink is darker than the paper: the way the ink departs from the paper around it
    (`ink_side`), which a shadow or light falling off across the sheet does not turn. Where that is
    not clear (a small picture, grainy paper), the ink is the class whose pixels lie clearly nearer
    their edge (strokes are thin, paper is wide) where the digit fills the picture to its edges (a
    16x16 scan) and the border ring holds ink and paper alike; else the border ring is the paper,
    unless the ring is darker but the dark departures from the blocks' levels are clearly thin
    (`thin_dark`): a shadow over the ring, or a desk around the sheet not found as one."""
    side = ink_side(gray, s)
    if side is not None:
        return side
    edge = ring(gray)
    quarter = 0.25 * (high - low)
    if min((edge <= low + quarter).mean(), (edge >= high - quarter).mean()) >= 0.2:  # ink reaches the edges
        threshold = otsu(thin(gray), low)
        side = thinner_side(reduced(gray, 128) < threshold, limit=8)
        if side is not None:
            return side
    paper = ring_median(edge)
    return (paper - low) > (high - paper) or thin_dark(gray, s)


def desk(gray: np.ndarray, low: float, high: float, s: Settings = SETTINGS, side: int = 128) -> np.ndarray | None:
    """Where a photo shows what the sheet of paper lies on, as a boolean image; None when it does not.
    The border ring would take a dark desk for the paper and the sheet for ink; a desk lighter than the
    sheet (a grey card, a coloured note or brown paper on a white table) leaves the sheet's edges beside
    the digit as strokes.

    Found on a copy `side` px long, split at Otsu's level. Where the border ring is dark, the sheet is
    the largest light piece (`sheet_on`), its marks what is dark inside it (a light bar of a 1 holds
    none; the hole of a digit written on it is paper). Where the ring is light, it is the largest dark
    piece, a 16th of the picture or more and dark all over (`solid`), its marks what is darker than it
    by half its step under the desk (`darker_marks`). The marks are at most 30 % of the sheet; where
    there are none at this size, the sheet must lie whole inside the picture and hold writing at full
    size (`faint_writing`). The sheet is wide where its marks are strokes, its pixels half as deep again
    inside it as theirs inside them (a bold 8 is as thick as its holes). What lies around it must be a
    desk (`a_desk`) where the sheet is the darker, where its writing is faint (the lighter part of a
    sheet that light falls off across has the writing run out of it), and where it runs past two edges
    or more (light falling off across a sheet, a shadow over it, or a bold stroke along the picture's
    edge, makes a lighter part that runs past them too). Strokes written up to a lighter sheet's edge
    are left to the sheet."""
    small = reduced(gray, side)
    if min(small.shape) < 8:
        return None
    lit = small > otsu(thin(small), low)
    lighter = (~ring(lit)).mean() >= 0.2  # a light border ring shows no desk (most pictures), or a lighter one
    if not lighter and np.count_nonzero(~lit) < lit.size / 16:  # too little is dark for a darker sheet
        return None
    found = sheet_on(lit if lighter else ~lit, solid=not lighter)
    if found is None:
        return None
    paper, box, runs_past, around = found
    written = ~around & ~lit if lighter else darker_marks(small, paper, around, low, s)
    if written is None:
        return None
    marks = int(np.count_nonzero(written))
    if marks > 0.3 * np.count_nonzero(~around):
        return None
    faint = marks == 0  # a card or small sheet lying whole on the desk may hold pencil this size averaged away
    if faint and (runs_past.any() or not faint_writing(gray, small, box, around, s)):
        return None
    strokes, grown = mean_depth(written, 8), dilated(around, 1)  # the desk and the sheet's rim
    if (mean_depth(paper & ~written, 8) < 1.5 * strokes
            or (not lighter or faint or runs_past.sum() >= 2) and not a_desk(small, paper, around, grown, strokes)):
        return None
    if lighter:
        # Strokes written up to the sheet's edge join the desk: what of it reaches into the sheet's box thinner
        # than 5 px (opened away) is writing. Outside the box a desk may be as thin (a screenshot's margin).
        top, left, bottom, right = box
        writing = np.zeros_like(around)
        writing[top:bottom, left:right] = (around & ~opened(around, 5))[top:bottom, left:right]
        grown = dilated(around & ~writing, 1)
    return np.asarray(Image.fromarray(grown).resize((gray.shape[1], gray.shape[0]), Image.NEAREST)) > 0


def sheet_on(pieces: np.ndarray, solid: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The largest piece of the boolean image `pieces` taken for a sheet: its mask, its box, the edges of
    the picture it runs past, and what lies around it, the desk: what reaches an edge the sheet does not
    reach, or a corner (where a turned sheet's edge crosses the frame); a mark reaching only an edge the
    sheet runs past is writing the frame cuts. None where the sheet is not one: it covers less than 85 %
    of its box, with what it holds filled in (a sheet turned a few degrees does not; a digit does not),
    or `solid`, without (a sheet darker than its desk holds its writing as part of it: what it holds
    lighter makes it an outline, a box or a frame drawn round a digit), it runs past every edge, or the
    desk covers less than a fifth of the border ring."""
    found = find_blobs(pieces)
    if found.n == 0:
        return None
    sheet = int(np.argmax(found.area))
    top, left, bottom, right = box = found.boxes[sheet]
    least = 0.85 * (bottom - top) * (right - left)
    if solid and found.area[sheet] < least:
        return None
    paper = found.mask([sheet], pieces.shape)
    rest = find_blobs(~paper)
    runs_past, reached = edges_reached(found.boxes[[sheet]], pieces.shape)[0], edges_reached(rest.boxes, pieces.shape)
    around = rest.mask(np.flatnonzero((reached & ~runs_past).any(1) | (reached.sum(1) >= 2)), pieces.shape)
    if np.count_nonzero(~around) < least or runs_past.all() or ring(around.astype(np.float32)).mean() < 0.2:
        return None
    return paper, box, runs_past, around


def darker_marks(small: np.ndarray, paper: np.ndarray, around: np.ndarray, low: float, s: Settings
                 ) -> np.ndarray | None:
    """The marks on a sheet darker than its desk (`paper` in `small`, the desk `around`): what is darker
    than the sheet by half its step under the desk (a shadow across it is not as deep; the ink that
    Otsu's split put with the sheet is). None where the sheet is under a 16th of the picture, or where
    there is no room for ink darker than it: the piece is ink."""
    sheet_level, desk_level = float(np.median(small[paper])), float(np.median(small[around]))
    below = sheet_level - max(s.min_contrast, 0.5 * (desk_level - sheet_level))
    if np.count_nonzero(paper) < paper.size / 16 or below <= low:
        return None
    return paper & (small < below)


def faint_writing(gray: np.ndarray, small: np.ndarray, box: np.ndarray, around: np.ndarray, s: Settings) -> bool:
    """Whether a piece lying whole inside the picture, `box` in `small` (`gray` reduced), holds writing
    that the reduction averaged into the paper: at full size, in its middle (a sixth of it in from each
    side, and 2 px of `small`: the rim, the desk past a turned corner, a stroke's soft edge stay out),
    at least 0.2 % of the pixels darker than the piece's level by a fifth of its step from the desk's
    (`around`). A sheet is no narrower than a third of its length: a light bar of a 1 is."""
    top, left, bottom, right = (int(v) for v in box)
    if 3 * min(bottom - top, right - left) < max(bottom - top, right - left):
        return False
    fy, fx = gray.shape[0] / small.shape[0], gray.shape[1] / small.shape[1]
    dy, dx = max(2, (bottom - top) // 6), max(2, (right - left) // 6)
    middle = gray[round((top + dy) * fy):round((bottom - dy) * fy), round((left + dx) * fx):round((right - dx) * fx)]
    if middle.size == 0:
        return False
    level = float(np.median(thin(middle)))
    step = abs(level - float(np.median(small[around])))
    return np.count_nonzero(middle < level - max(s.min_contrast, 0.2 * step)) >= 0.002 * middle.size


def a_desk(small: np.ndarray, sheet: np.ndarray, around: np.ndarray, grown: np.ndarray, strokes: float) -> bool:
    """Whether what lies `around` the `sheet` is a desk, not the sheet's own shadowed or unlit part nor a
    stroke of the digit. The sheet's edge is sharp: within 3 px of the desk, at most 1.5 pixels for each
    pixel of the sheet's rim lie in the middle half of the step between the desk's level and the sheet's
    (where light falls off across a sheet, or a phone's shadow ends, the step spreads over many pixels).
    Nothing is written on a desk: at most 0.5 % of it is darker than its level by a fifth of that step
    (where a hard shadow cuts across a sheet, what is written in the shadow is; a pen lying on the desk
    is refused too), 3 px or more from a sheet darker than the desk (its rim is dark too). And a desk is
    wide: its pixels three times as deep inside it as the marks' pixels are inside theirs, `strokes`
    (mean depth). `grown`: `around` and the sheet's rim, one pixel wide. The frame cuts a desk, which
    doubles its depth: a bold 1 cut tight along the picture's edge is twice as deep as the other strokes
    of its digit."""
    sheet_level, desk_level = float(np.median(small[sheet])), float(np.median(small[around]))
    step = abs(sheet_level - desk_level)
    middle = np.abs(small - (sheet_level + desk_level) / 2) < 0.25 * step
    rim = np.count_nonzero(grown & ~around)
    spread = np.count_nonzero(middle & dilated(around, 3) & (sheet | around))
    away = around & ~dilated(sheet, 2) if sheet_level < desk_level else around  # a darker sheet's rim is dark too
    written = np.count_nonzero(away & (small < desk_level - 0.2 * step))
    return (spread <= 1.5 * rim and written <= 0.005 * np.count_nonzero(around)
            and mean_depth(around, 16) >= 3 * strokes)


def dilated(mask: np.ndarray, px: int) -> np.ndarray:
    """`mask` grown by `px` pixels each way (a square neighbourhood)."""
    return spread(mask, 2 * px + 1, np.maximum)


def opened(values: np.ndarray, k: int) -> np.ndarray:
    """`values` opened over k x k squares (k odd): the minimum, then the maximum. What is narrower than k
    (a stroke, a speck) goes; what is wider keeps its shape."""
    return spread(spread(values, k, np.minimum), k, np.maximum)


def edges_reached(boxes: np.ndarray, shape: tuple[int, int], parts: int = 0) -> np.ndarray:
    """(n, 4) bool: whether each box (top, left, bottom, right) reaches the picture's top, left, bottom
    and right edge; with `parts`, within that fraction of the picture's height or width (a 50th: 50)."""
    h, w = shape
    dy, dx = (h // parts, w // parts) if parts else (0, 0)
    return np.stack([boxes[:, 0] <= dy, boxes[:, 1] <= dx, boxes[:, 2] >= h - dy, boxes[:, 3] >= w - dx], 1)


def block_medians(values: np.ndarray, blocks: int) -> np.ndarray:
    """The median level of each block of a grid with `blocks` blocks (of 8 px or more) along the longer
    side (`block_cells`): each block's median of 16 cells. Cheap, and robust to strokes crossing the block."""
    return cell_medians(block_cells(values, blocks))


def block_grid(shape: tuple[int, int], blocks: int) -> tuple[int, int]:
    """Rows and columns of the background's grid for a picture of `shape`: `blocks` blocks of 8 px or
    more along the longer side, covering the picture edge to edge."""
    size = max(8, max(shape) // blocks)
    return -(-shape[0] // size), -(-shape[1] // size)


def few_blocks(shape: tuple[int, int], blocks: int) -> bool:
    """Whether a picture of `shape` is short of a full grid of `blocks` blocks (under 121 px at 16):
    its background is `small_background`'s."""
    return max(block_grid(shape, blocks)) < blocks


def block_cells(values: np.ndarray, blocks: int) -> np.ndarray:
    """`values` box-averaged to exactly 4x4 cells per block of the background's grid (`block_grid`)."""
    gh, gw = block_grid(values.shape, blocks)
    return np.asarray(Image.fromarray(np.asarray(values, dtype=np.float32), "F").resize((4 * gw, 4 * gh), Image.BOX))


def cell_medians(cells: np.ndarray) -> np.ndarray:
    gh, gw = cells.shape[0] // 4, cells.shape[1] // 4
    return np.median(cells.reshape(gh, 4, gw, 4).transpose(0, 2, 1, 3).reshape(gh, gw, 16), axis=2)


def departures(gray: np.ndarray, side: int, s: Settings) -> np.ndarray | None:
    """`gray` reduced to `side` minus the level of its blocks (their medians, the paper's where strokes
    are thin): where marks stand out, whichever way. None for a picture too small to have blocks.
    The level is held between the picture opened and closed over squares as wide as a shadow
    (`Settings.shadow_width`), which strokes leave and a shadow's edge follows: blocks straddling
    that edge take a level between light and shadow, and both sides of it departed as far as strokes."""
    small = reduced(gray, side)
    if max(block_grid(small.shape, s.blocks)) <= 4:  # a small picture: its blocks are too few to have a level
        return None
    grid = block_medians(small, s.blocks)
    opened = over_squares(small, s.shadow_width, np.minimum, np.maximum, grow=0)
    closed = over_squares(small, s.shadow_width, np.maximum, np.minimum, grow=0)
    return small - np.clip(stretch(grid, small.shape), opened, closed)


def thinner_side(dark: np.ndarray, limit: int) -> bool | None:
    """True if the pixels of `dark` lie clearly (1.25 times) nearer their edge than the others do, False
    if the others do, None if neither: strokes are thin, paper is wide (mean depth up to `limit`)."""
    depth_dark, depth_light = mean_depth(dark, limit), mean_depth(~dark, limit)
    if depth_light > 1.25 * depth_dark:
        return True
    if depth_dark > 1.25 * depth_light:
        return False
    return None


def ink_side(gray: np.ndarray, s: Settings, clearly: float = 2.0) -> bool | None:
    """True if the ink is darker than what is around it, False if lighter, None if that is not clear:
    the picture's strongest departures from the level of their block must go one way `clearly` times
    as far as the other. The border ring alone would not do: under a shadow or in a dark corner it is
    darker than the paper's middle. A page is looked at 256 px long: its strokes still depart, at a
    sixteenth of the cost."""
    flat = departures(gray, 256, s)
    if flat is None:
        return None
    darker, lighter = extremes(flat)
    if -darker >= clearly * max(lighter, 1.0):
        return True
    if lighter >= clearly * max(-darker, 1.0):
        return False
    return None


def thin_dark(gray: np.ndarray, s: Settings) -> bool:
    """Whether the marks departing darker from the level of their block (Otsu's split) are clearly
    thinner than the rest: dark strokes on wide paper, where `ink_side` is not clear (grainy paper,
    or a shadow whose edge departs from its blocks as far as the strokes do). Never the other way:
    in a picture cut tight to thick strokes, the paper left between them is thinner still. Looked at
    128 px long or less: blocks of 8 px or more are wider than bold strokes, the paper's grain is
    averaged away; a picture too small for blocks is not judged."""
    flat = departures(gray, 128, s)
    if flat is None:
        return False
    return thinner_side(flat < otsu(flat, flat.min()), limit=4) is True  # strokes: a few px wide


def block_background(ink: np.ndarray, blocks: int, width: float, ceiling: float, step: float | None = None
                     ) -> np.ndarray:
    """Smooth estimate of the background of `ink` (ink bright): block medians, opened so blocks
    covered by strokes take their neighbours' level, then bilinearly stretched back to full size.
    Blocks inside strokes too bold for the opening, as bright as the ink (`ceiling`), take the paper's
    level around them (`without_strokes`). With `step`, the edges of shadows (wider than `width` of the
    picture) are kept sharp (`under_shadows`)."""
    if few_blocks(ink.shape, blocks):  # 3x3 blocks would span a fifth of the picture or more
        return small_background(ink)
    level = digital_paper(ink)
    if level is not None:  # one level: the blocks are not needed
        return np.full_like(ink, level)
    h, w = ink.shape
    gh, gw = block_grid(ink.shape, blocks)
    cells = block_cells(ink, blocks)
    grid = cell_medians(cells)
    # grey-level opening over 3x3 blocks, on the grid extended by two blocks that continue its slope:
    # at the edge of a page whose light falls across it, the opening would otherwise cut a step
    extended = np.pad(grid, [(2, 2) if n >= 3 else (0, 0) for n in grid.shape], mode="reflect", reflect_type="odd")
    grid = opened(extended, 3)
    grid = grid[2:-2] if gh >= 3 else grid
    grid = grid[:, 2:-2] if gw >= 3 else grid
    grid = without_strokes(grid, cells, width, ceiling)
    background = stretch(grid, (h, w))
    if step is None:
        return background
    return under_shadows(ink, background, cells, stretch(grid, cells.shape), width, step, ceiling)


def without_strokes(grid: np.ndarray, cells: np.ndarray, width: float, ceiling: float) -> np.ndarray:
    """`grid` (opened block levels, ink bright) with the blocks inside bold strokes given the paper's level
    around them. Where strokes are wider than the opening's 3x3 blocks (a marker, a junction of bold
    strokes), their blocks kept the strokes' level and the strokes were read hollow. A group of blocks
    at the ink's level (`ceiling` or more) is inside the writing when it does not reach the grid's edge
    (a shadow, a desk or a dark corner comes in from the edge) and holds nothing at that level wider
    than `width` of the picture (a shadow's width: a black note written on in white is no stroke).
    Filled from the blocks around, ring by ring, so light falling across the page goes on under it."""
    inked = grid >= ceiling
    if not inked.any():
        return grid
    blobs = find_blobs(inked)
    top, left, bottom, right = blobs.boxes.T
    inside = (top > 0) & (left > 0) & (bottom < grid.shape[0]) & (right < grid.shape[1])
    if inside.any():
        wide = paper_level(cells, width) >= ceiling
        gh, gw = grid.shape
        inside &= blobs.count(wide.reshape(gh, 4, gw, 4).any(axis=(1, 3))) == 0
    if not inside.any():
        return grid
    known = ~blobs.mask(np.flatnonzero(inside), grid.shape)
    grid = np.where(known, grid, 0.0)
    while not known.all():
        total = spread_sum(grid)
        count = spread_sum(known.astype(np.float32))
        ring = ~known & (count > 0)
        grid = np.where(ring, total / np.maximum(count, 1), grid)
        known |= ring
    return grid


def spread_sum(values: np.ndarray) -> np.ndarray:
    """The sum over the 3x3 square around each cell, cells past the edge counting 0."""
    v = np.pad(values, 1)
    v = v[:-2] + v[1:-1] + v[2:]
    return v[:, :-2] + v[:, 1:-1] + v[:, 2:]


def digital_paper(ink: np.ndarray, full: float = 0.9) -> float | None:
    """The paper's level of a digital drawing (a canvas, a screenshot, a scan enlarged), None for a photo.
    Its paper is one exact level over 70 % of its paper's side of Otsu's split, and what stands above
    it is mostly full ink (its median `full` of the way from the paper to the darkest) and strokes
    (mean depth under 4 px at 64 px; half of a two-tone page is not): a brush's strokes, however bold.
    There the blocks' level is wrong: a block inside a stroke wider than three blocks kept the stroke's
    level, and the stroke was read hollow. However little paper a bold digit cut tight leaves, it is
    that level. A photo's paper has grain (a JPEG squeezed hard flattens it into blocks of nearby
    levels: 61-63 % at one); a shadow laid over a canvas makes the marks above the paper mostly shadow."""
    sample = thin(ink, 16384)
    low, darkest = float(sample.min()), float(sample.max())
    threshold = otsu(sample, low)
    marks, paper_side = sample[sample > threshold], sample[sample <= threshold]
    paper, count = exact_level(paper_side)
    if count < 0.7 * paper_side.size or not marks.size or np.median(marks) - paper < full * (darkest - paper):
        return None
    strokes = reduced((ink > threshold).astype(np.float32), 64) >= 0.5
    return paper if mean_depth(strokes, limit=4) < 4 else None


def exact_level(values: np.ndarray) -> tuple[float, int]:
    """The most common exact level of `values` and how many hold it: a drawing's paper is one level,
    a photo's has grain (`digital_paper`, `small_background`)."""
    levels, counts = np.unique(values, return_counts=True)
    top = int(np.argmax(counts))
    return float(levels[top]), int(counts[top])


def small_background(ink: np.ndarray) -> np.ndarray:
    """The background of `ink` (ink bright) in a picture short of a full grid of blocks (under 121 px).
    There blocks are 8 px or more and 3x3 of them span a fifth of the picture or more: a digit cut
    tight puts strokes in every block, and the opened grid, continued past the edges, swallowed whole
    strokes (a clean digit cut tight at 40 px was "no digit found"). One level, the median of the
    paper's side of Otsu's split, where half of that side is one exact level (a drawing, a scan, MNIST
    itself: its anti-aliased edges spread the rest) or the picture is under 20 px (strokes as wide as
    a quarter of it). Else (a photo shrunk: light falling across it, grain, a shadow, all of which one
    level took for ink or left faint strokes under) the picture opened over squares a quarter of its
    size, wider than its strokes, the picture going on past its edges."""
    sample = ink - ink.min()
    paper = sample[sample <= otsu(sample)]
    if max(ink.shape) < 20 or exact_level(paper)[1] >= 0.5 * paper.size:
        return np.full_like(ink, np.median(paper) + ink.min())
    return over_squares(ink, 1 / 4, np.minimum, np.maximum, grow=0)


def under_shadows(ink: np.ndarray, background: np.ndarray, cells: np.ndarray, level: np.ndarray, width: float,
                  step: float, ceiling: float, side: int = 256) -> np.ndarray:
    """`background` raised to the paper's own level where a shadow's edge crosses the paper.

    Blocks that straddle a sharp shadow's edge (a hand, a phone, a lamp's cut-off) take a level
    between the light and the shadow, and the stretch blurs it over blocks: the paper just inside the
    shadow stands out as a line of ink along the edge, which joins the digits it crosses. The paper's
    own level (`paper_level`) keeps the edge sharp. Where, at the picture's `cells` (4 per block), it
    stands over the blocks' `level` by more than `step`, and 3 cells around, the background is raised
    to it, as measured again `side` px long (the edge to within a few pixels on a page): paper, not
    the strokes on it, which stand over it still. A shadow is paper, lighter than the writing: where
    what is wide is as dark as the ink (`ceiling` or more) within 3 cells, it is no shadow's edge (a
    bold stroke's junction, a bold white digit on black taken for dark ink: its black would go, and
    its strokes' outlines); unless it is a shadow as deep as the ink in the light (`deep_shadow`), or
    nothing narrow stands out anywhere, dark or light (blank paper, the shadow the darkest thing on it)."""
    paper = paper_level(cells, width)
    near = paper - level > step
    if not near.any():  # no shadow: looking at the cells (64 px long) costs about 0.1 ms
        return background
    factor = -(-max(ink.shape) // side)
    fine = reduced(ink, side)
    fine_paper = paper_level(fine, width)
    dark = spread(paper, 7, np.maximum) >= ceiling  # 3 cells around too
    if dark.any() and not deep_shadow(fine, fine_paper >= ceiling, step):
        strokes = np.maximum(cells - paper, over_squares(cells, width, np.maximum, np.minimum) - cells)
        if (strokes > step).any():
            near &= ~dark
    size = ink.shape[1], ink.shape[0]
    paper = np.asarray(Image.fromarray(fine_paper, "F").resize(size, Image.BILINEAR,
                                                               box=(0, 0, size[0] / factor, size[1] / factor)))
    near = np.asarray(Image.fromarray(dilated(near, 3)).resize(size, Image.NEAREST))
    return np.where(near, np.maximum(background, np.minimum(ink, paper)), background)


def deep_shadow(ink: np.ndarray, dark: np.ndarray, step: float) -> bool:
    """Whether the `dark` parts of `ink` (what is wider than a shadow's width and as dark as the ink)
    are a shadow as deep as the ink in the light: they cover a fifth of the picture or more, and
    something on them is darker still by `step` and narrower than a sixteenth of the picture (the
    digit's strokes under the shadow). A bold stroke's junction, or a stroke along the edge of a tight
    crop, is smaller, and its own shading is wider than that."""
    return dark.mean() >= 0.2 and bool((dark & (ink - paper_level(ink, 1 / 16) > step)).any())


def paper_level(values: np.ndarray, width: float) -> np.ndarray:
    """The level of what is wider than `width` of the picture: `values` opened over squares that wide,
    so strokes (narrower) are gone and a shadow (wider) stays, its edge sharp; grown by a pixel more,
    as resizing blurs the edge by one."""
    return over_squares(values, width, np.minimum, np.maximum)


def over_squares(values: np.ndarray, width: float, first: np.ufunc, then: np.ufunc, grow: int = 2) -> np.ndarray:
    """`first` then `then` (np.minimum, np.maximum) over squares `width` of the picture wide, the second
    `grow` pixels wider. The picture is taken to go on past its edges, so a shadow along an edge keeps
    its corners: half the second square past them is enough, as what lies further is the edge again."""
    k = round(width * max(values.shape)) // 2 * 2 + 1
    pad = (k + grow) // 2
    level = spread(spread(np.pad(values, pad, mode="edge"), k, first), k + grow, then)
    return level[pad:pad + values.shape[0], pad:pad + values.shape[1]]


def stretch(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A grid of block levels interpolated to `shape`, bilinearly between block centres and linearly
    extrapolated beyond the outer ones: light that falls across the page keeps falling to its edge,
    where holding the last block's level would leave a band of false ink.

    Pillow interpolates (5x faster than NumPy on a page): the grid gets one more block on each side
    that continues its slope, and `box` maps the output's edges to the outer blocks' outer edges."""
    padded = np.pad(grid.astype(np.float32), 1, mode="reflect", reflect_type="odd")  # 2 * edge - next
    height, width = grid.shape
    image = Image.fromarray(padded, "F").resize((shape[1], shape[0]), Image.BILINEAR, box=(1, 1, 1 + width, 1 + height))
    return np.asarray(image)


def spread(values: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """`op` (np.minimum or np.maximum) over the k x k square (k odd) centred on each pixel, of the
    pixels in the picture: along rows, then along columns (`running`). The same as the picture's
    edges repeated past it (what Pillow's MinFilter and MaxFilter do, 5x slower), for any dtype."""
    return running(running(values, k, op).T, k, op).T


def running(values: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """`op` over the k pixels of each row centred on each (k odd): runs of 2, 4, 8... pixels, each
    from two of the run before, then two overlapping runs make k. A few whole-array passes for any k."""
    n, half = values.shape[1], k // 2
    if values.size == 0:
        return values.copy()
    past_edges = values.max() if op is np.minimum else values.min()  # changes no pixel's result, in any dtype
    runs = np.full((values.shape[0], n + 2 * half), past_edges, dtype=values.dtype)
    runs[:, half:half + n] = values
    span = 1
    while 2 * span <= k:
        runs = op(runs[:, :-span], runs[:, span:])
        span *= 2
    return op(runs[:, :n], runs[:, k - span:k - span + n])


def otsu(values: np.ndarray, low: float = 0.0, bins: int = 128) -> float:
    """The threshold that best splits `values` into two classes (Otsu 1979), on a histogram from `low`
    up (what lies below it counts as `low`: callers pass the darkest level of the picture, or of enough of it)."""
    values = np.maximum(values - low, 0.0)
    high = float(values.max())
    if high <= 0:
        return low
    counts = np.bincount(np.minimum(values.ravel() * (bins / high), bins - 1).astype(np.intp), minlength=bins)
    edges = np.linspace(0.0, high, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1]) + low


# ---------------------------------------------------------------- ruled and squared paper

MAX_TILT = 0.5  # the steepest ruling or line of writing looked for, rise over run: a sheet 27 degrees askew
THIN_RULING = 48  # a printed ruling is 1/48 of the height thick at most (3 px or more)
BLURRED_RULING = 24  # one blurred by a soft photo 1/24 (`clear_ruling` asks more of it: light, edge to edge)
UNDERLINE_TILT = 0.1  # the steepest line under the digits cleared (`clear_underline`): a 2's base may slope more


def best_slope(mask: np.ndarray, slopes: np.ndarray, points: int = 8192) -> float:
    """Of `slopes`, the one whose straight lines gather about `points` pixels of `mask` most tightly (the
    largest sum of squared counts per line: a ruling piles its pixels onto one line, a blob onto many)."""
    return slope_of(*sampled(mask, points), mask.shape, slopes)


def sampled(mask: np.ndarray, points: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns of about `points` of `mask`'s pixels, taken evenly in reading order."""
    ys, xs = np.nonzero(mask)
    step = max(1, len(ys) // points)
    return ys[::step], xs[::step]


def slope_of(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int], slopes: np.ndarray) -> float:
    """Of `slopes`, the one whose straight lines gather the points (`ys`, `xs`) of a picture of `shape`
    most tightly: the largest sum of squared counts per line."""
    h, w = shape
    reach = math.ceil(float(np.abs(slopes).max()) * w) + 1
    span = h + 2 * reach
    offsets = ys - np.round(slopes[:, None] * xs).astype(np.intp) + reach + span * np.arange(len(slopes))[:, None]
    counts = np.bincount(offsets.ravel(), minlength=span * len(slopes)).reshape(len(slopes), span)
    return float(slopes[np.argmax((counts.astype(np.float64) ** 2).sum(1))])


def line_cover(mask: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per straight line whose row moves by `shift` (one per column): its pixels in `mask` and its length
    inside the picture; and `reach`, the index of the line through row 0 of column 0 (lines start above)."""
    h, w = mask.shape
    reach = int(np.abs(shift).max())
    ys, xs = np.nonzero(mask)
    counts = np.bincount(ys - shift[xs] + reach, minlength=h + 2 * reach)
    starts = np.zeros(h + 2 * reach + 1, dtype=np.intp)
    np.add.at(starts, reach - shift, 1)
    np.add.at(starts, reach - shift + h, -1)
    return counts, np.cumsum(starts)[:-1], reach


def may_reach_across(mask: np.ndarray) -> bool:
    """Whether something in `mask` reaches both its sides (its first and last twentieth of columns) at rows
    a line turned MAX_TILT at most could join: where a ruling printed to the picture's edges may be."""
    h, w = mask.shape
    end = max(1, w // 20)
    left, right = np.flatnonzero(mask[:, :end].any(1)), np.flatnonzero(mask[:, -end:].any(1))
    if len(left) == 0 or len(right) == 0:
        return False
    after = np.searchsorted(right, left)  # the right-side rows nearest each left-side one: a line joins two
    above, below = right[np.maximum(after - 1, 0)], right[np.minimum(after, len(right) - 1)]
    return bool(np.minimum(np.abs(left - above), np.abs(below - left)).min() <= MAX_TILT * w + 2)


def may_hold_lines(mask: np.ndarray) -> bool:
    """Whether `ruled_lines` may find a line printed short of the picture's edges in `mask` (a sheet's
    margin, the sheet's edge on a desk), looked at cheaply on a copy 64 px long (max-pooled, so a line
    stays one and its gaps close): a straight line three rows thick (pooled, a turned line steps between
    rows its rounded course does not), 60 % covered over half the width or more, with paper three rows
    away on both sides where it is covered (a band of digits pooled together is thicker). About a fifth
    of the cost of looking at 256 px."""
    k = -(-max(mask.shape) // 64)
    small = block_extreme(mask.view(np.uint8), k, np.maximum).astype(bool)
    if small.mean() > 0.4:  # a fine grid or ruling fills the copy
        return True
    h, w = small.shape
    slope = best_slope(small, np.arange(-int(MAX_TILT * w), int(MAX_TILT * w) + 1) / w)
    shift = np.round(slope * np.arange(w)).astype(np.intp)
    rows = np.arange(h)[:, None] - shift + int(np.abs(shift).max()) + 3  # each line a row, three empty rows above
    along, inside = np.zeros((2, int(rows.max()) + 4, w), dtype=bool)
    along[rows, np.arange(w)], inside[rows, np.arange(w)] = small, True
    line, length = along[2:-4] | along[3:-3] | along[4:-2], (inside[2:-4] | inside[3:-3] | inside[4:-2]).sum(1)
    covered = line.sum(1)
    thin = (line & (along[:-6] | along[6:])).sum(1) <= 0.5 * covered
    return bool(((covered >= 0.6 * length) & (length >= w / 2) & thin).any())


def ruled_lines(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """The long thin straight lines that run near-horizontally across `mask` (a ruling, a grid's rows), each
    as (core, band, reaches), its rows in every column (k, width): core the lines that have 60 % of their
    length in `mask`, band the core and a row on each side (its anti-aliased edges), beyond which lies paper
    in most columns; reaches whether it reaches both ends of `mask` (within a twentieth), as a stroke does
    not, nor a ruling printed short of them (a sheet's margin). Thin: a 24th of the height at most (3 px or
    more), as a soft photo blurs a ruling (`clear_ruling` takes lines thicker than a 48th only where they are
    light and run edge to edge: a bold stroke is as dark as the writing). The slope is searched on a copy 256
    px long (max-pooled: a 1-px line stays one; larger where a fine grid fills it), every 4th step first (a
    line then runs 2 rows off at most, still gathered more tightly than at any other slope) and then around
    the best, then at full size within two of its steps."""
    if not (may_reach_across(mask) or may_hold_lines(mask)):  # most pictures end here
        return []
    h, w = mask.shape
    k = -(-max(h, w) // 256)
    while True:
        small = block_extreme(mask.view(np.uint8), k, np.maximum)  # k = 1: a copy
        if k == 1 or small.mean() <= 0.5:
            break
        k //= 2  # a fine grid fills the copy: look closer
    sw = small.shape[1]
    ys, xs = sampled(small)
    slope = slope_of(ys, xs, small.shape, np.arange(-int(MAX_TILT * sw), int(MAX_TILT * sw) + 1, 4) / sw)
    slope = slope_of(ys, xs, small.shape, slope + np.arange(-3, 4) / sw)
    counts, length, _ = line_cover(small, np.round(slope * np.arange(sw)).astype(np.intp))
    if not ((counts >= 0.6 * length) & (length >= sw / 2)).any():
        return []
    slope = best_slope(mask, slope + np.arange(-2 * k, 2 * k + 1) / w)
    shift = np.round(slope * np.arange(w)).astype(np.intp)
    counts, length, reach = line_cover(mask, shift)
    covered = np.flatnonzero((counts >= 0.6 * length) & (length >= w / 2))
    lines = []
    for run in np.split(covered, np.flatnonzero(np.diff(covered) > 1) + 1):
        if len(run) == 0 or len(run) > max(3, h // BLURRED_RULING):
            continue
        core, band = run[:, None] - reach + shift, np.arange(run[0] - 1, run[-1] + 2)[:, None] - reach + shift
        if (beside(mask, band[0] - 1) | beside(mask, band[-1] + 1)).mean() > 0.5:  # a thick or curved stroke
            continue
        on = np.logical_or.reduce([beside(mask, row) for row in core])
        inside = np.flatnonzero(((core >= 0) & (core < h)).any(0))
        ends = max(1, len(inside) // 20)
        lines.append((core, band, bool(on[inside[:ends]].any() and on[inside[-ends:]].any())))
    return lines


def beside(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`values` at `rows`, one row per column (0 or False outside the picture): what lies along a line."""
    inside = (rows >= 0) & (rows < values.shape[0])
    return np.where(inside, values[np.clip(rows, 0, values.shape[0] - 1), np.arange(values.shape[1])], 0)


def along(rows: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The (row, column) pixels of `rows` (k, width), one row per column each, inside a picture `h` high."""
    cols = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    inside = (rows >= 0) & (rows < h)
    return rows[inside], cols[inside]


def clear_ruling(ink: np.ndarray, s: Settings = SETTINGS) -> None:
    """The lines of ruled or squared paper removed from `ink` (background subtracted, ink bright), in place.

    Left in, a grid is read as strokes and a ruling widens the digit's frame. A line that reaches both
    edges goes when it is lighter than the writing (60 % of its level or less: printed rulings are light)
    or one of three such parallel lines or more (a grid as dark as the pen); a single line as dark as the
    writing is a stroke or an underline, and stays. A line that stops short of the edges (a ruling
    printed short of them, a long stroke) goes only when it is lighter and three lines or more are found,
    a grid's rows and columns counted together: a stroke is not, nor the frames of a form's boxes. A line
    thicker than a 48th of the height (a ruling blurred by a soft photo) goes only where it reaches both
    edges and is lighter: a bold stroke is as dark as the writing. On a light line, pixels more than
    halfway to the writing's level stay (a stroke over it), and in any line the columns where ink lies on
    both sides of it (a stroke that goes on through). Lines are found among pixels 3 noise deviations
    above the paper, not 6: a line has many pixels, so a faint ruling on grainy paper is found and noise
    is not."""
    h, w = ink.shape
    if min(h, w) < 48:  # a canvas or a scan of one digit: too few pixels for a ruling, and its bars span it
        return
    sample = thin(ink)
    centre = float(np.median(sample))
    faint = centre + max(s.min_contrast, 3 * 1.4826 * float(np.median(np.abs(sample - centre))))
    marked = ink > faint
    views = ((ink, marked), (ink.T, marked.T))  # a grid's rows, then its columns; .T writes through to `ink`
    found = [ruled_lines(mask) for _, mask in views]
    if not any(found):
        return
    on_line = np.zeros(ink.shape, dtype=bool)
    for (view, _), lines, on in zip(views, found, (on_line, on_line.T)):
        for _, band, _ in lines:
            on[along(band, view.shape[0])] = True
    writing = ink[marked & ~on_line]
    writing = float(np.percentile(writing, 90)) if writing.size else 0.0
    rulings = []  # per view: (band, reaches, level before any is cleared, lighter)
    for (view, _), lines in zip(views, found):
        rulings.append([])
        for core, band, reaches in lines:
            level = float(np.median(view[along(core, view.shape[0])]))
            lighter = level <= 0.6 * writing
            if len(core) <= max(3, view.shape[0] // THIN_RULING) or reaches and lighter:  # else a bold stroke
                rulings[-1].append((band, reaches, level, lighter))
    printed = sum(len(lines) for lines in rulings) >= 3  # a ruling, or a grid's rows and columns
    for (view, _), lines in zip(views, rulings):
        reaching = sum(reaches for _, reaches, _, _ in lines)
        for band, reaches, level, lighter in lines:
            if not ((lighter or reaching >= 3) if reaches else (lighter and printed)):
                continue
            stroke = (level + writing) / 2 if lighter else faint
            through = np.minimum(beside(view, band[0] - 1), beside(view, band[-1] + 1)) > stroke
            rows, cols = along(np.where(through, -1, band), view.shape[0])
            values = view[rows, cols]
            view[rows, cols] = np.where(values > stroke, values, 0.0) if lighter else 0.0


def ink_map(gray: np.ndarray, s: Settings = SETTINGS) -> np.ndarray:
    """float32 (H, W) in [0, 1]: 1 where there is full-strength ink, 0 on paper, shadows and noise.

    Polarity comes from the paper (the border, or the sheet that a desk shows around it): dark ink on
    light paper is inverted. The background (uneven light, shadows, grey paper) is subtracted, and the
    lines of ruled or squared paper; what stays is scaled from the noise floor to the typical ink
    level, so faint pencil and black marker end up alike. A grainy picture is smoothed first.
    """
    low, high = extremes(gray)
    measured = noise = grain(gray)
    contrast = high - low  # as it came: smoothing fades a thin line, which must not ask for more smoothing
    for passes in range(1, 4):  # a photo taken in dim light, its ink barely out of the grain
        if noise <= s.max_grain * contrast:
            break
        gray = smoothed(gray)
        noise = measured * math.comb(4 * passes, 2 * passes) / 16**passes  # what the passes leave of white noise
        low, high = extremes(gray)
    if high - low < s.min_contrast:
        raise NoDigitError("no digit found (the image is blank)")
    around = desk(gray, low, high, s)
    if around is None:
        return paper_ink(gray, low, high, s, noise)
    # A desk around the sheet: the sheet alone is read, cut to its box, what the box holds of the desk
    # made paper (the sheet's own level). The ring is then paper, and a ruling or grid reaches the ends
    # of what is looked at, as it reaches the sheet's edges.
    rows, columns = np.nonzero(~around)
    box = slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1)
    sheet = np.where(around[box], np.median(thin(gray)[~thin(around)]), gray[box]).astype(np.float32)
    ink = np.zeros_like(gray)
    ink[box] = paper_ink(sheet, *extremes(sheet), s, noise)
    return ink


def grain(gray: np.ndarray, count: int = 16384) -> float:
    """The pixel noise's standard deviation, from the median difference of about `count` pairs of
    horizontal neighbours: paper fills most of a picture, so strokes' edges barely move the median."""
    if gray.shape[1] < 2:
        return 0.0
    step = max(1, gray.size // count)
    return float(np.median(np.abs(np.diff(gray[::step], axis=1)))) / (MAD_SIGMA * math.sqrt(2))


def smoothed(gray: np.ndarray) -> np.ndarray:
    """`gray` through a 3x3 binomial filter (1 2 1 each way), edges repeated."""
    g = np.pad(gray, 1, mode="edge")
    g = (g[:-2] + 2 * g[1:-1] + g[2:]) * 0.25
    return (g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]) * 0.25


def paper_ink(gray: np.ndarray, low: float, high: float, s: Settings = SETTINGS, noise: float = 0.0
              ) -> np.ndarray:
    """`ink_map` of a picture that is all paper and ink, its darkest and lightest levels `low`, `high`,
    its pixel noise `noise` grey levels (`grain`): a floor under the noise measured on the paper, which
    Otsu's cut narrows, so that smoothed grain on blank paper is not taken for strokes."""
    step = max(s.min_contrast, s.shadow_step * (high - low))  # a step in the paper's level, or in the ink's
    dark = dark_ink(gray, low, high, s)
    ceiling = (255.0 - low if dark else high) - 2 * step  # the strongest ink less two steps: no shadow is as strong
    if dark:  # dark ink on light paper: ink is the fraction of light absorbed
        ink = 255.0 - gray
        background = block_background(ink, s.blocks, s.shadow_width, ceiling, step)
        ink -= background
        gain = 255.0 / np.maximum(255.0 - background, s.min_contrast)  # as dark in a shadow as in the light
        ink *= gain
        if noise:  # grain on the paper's scale; a clean picture (a canvas, a JPEG) has none
            noise *= float(np.median(thin(gain)))
    else:  # light ink (chalk, a canvas, MNIST itself): the background is dark, so only subtract it
        ink = gray.astype(np.float32, copy=True)
        ink -= block_background(ink, s.blocks, s.shadow_width, ceiling)
    clear_ruling(ink, s)
    threshold = otsu(thin(ink, 16384))
    residual = thin(ink)
    paper = residual[residual <= threshold]  # Otsu's paper side: ink, even a bold digit cropped tight, is not noise
    quartile, centre = np.percentile(paper if paper.size else residual, [25, 50])
    sigma = max(float(centre - quartile) / MAD_SIGMA, noise, 0.5)
    np.maximum(ink, 0.0, out=ink)
    strokes = ink[ink > max(threshold, centre + s.min_snr * sigma)]
    if strokes.size == 0:
        raise NoDigitError("no digit found (nothing stands out from the background)")
    full = float(np.percentile(strokes, s.ink_level))
    floor = centre + s.noise_floor * sigma
    if full - centre < max(s.min_contrast, s.min_snr * sigma):
        raise NoDigitError("no digit found (nothing stands out from the background)")
    ink -= floor
    ink *= 1.0 / (full - floor)
    return np.clip(ink, 0.0, 1.0, out=ink)


# ---------------------------------------------------------------- connected components


@dataclass
class Blobs:
    """Connected pieces of ink, found on horizontal runs (8-connectivity), not per pixel in Python."""

    rows: np.ndarray  # (R,) row of each run
    starts: np.ndarray  # (R,) first column of each run
    ends: np.ndarray  # (R,) one past the last column
    label: np.ndarray  # (R,) blob index of each run, 0..n-1
    n: int

    def count(self, where: np.ndarray) -> np.ndarray:
        """How many pixels of each blob are True in the boolean image `where`."""
        width = where.shape[1]
        total = np.concatenate([[0], np.cumsum(where.ravel(), dtype=np.int64)])
        per_run = total[self.rows * width + self.ends] - total[self.rows * width + self.starts]
        return np.bincount(self.label, weights=per_run, minlength=self.n)

    def stat(self, values: np.ndarray, op: np.ufunc, initial: float) -> np.ndarray:
        out = np.full(self.n, initial, dtype=np.float64)
        op.at(out, self.label, values)
        return out

    @property
    def area(self) -> np.ndarray:
        return np.bincount(self.label, weights=self.ends - self.starts, minlength=self.n)

    @cached_property
    def boxes(self) -> np.ndarray:
        """(n, 4) top, left, bottom, right (exclusive) of each blob (computed once: specks and layout both ask)."""
        return np.stack([self.stat(self.rows, np.minimum, np.inf), self.stat(self.starts, np.minimum, np.inf),
                         self.stat(self.rows + 1, np.maximum, -1), self.stat(self.ends, np.maximum, -1)],
                        1).astype(int)

    def mask(self, keep: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int] | None = None
             ) -> np.ndarray:
        """Boolean image of the blobs whose indices are in `keep`: of the whole `shape`, or only of
        `box` (top, left, bottom, right), which must hold those blobs (a digit of a page: its own box)."""
        top, left, bottom, right = box if box is not None else (0, 0, *shape)
        chosen = np.isin(self.label, keep)
        rows = self.rows[chosen] - top
        edges = np.zeros((bottom - top, right - left + 1), dtype=np.int32)
        np.add.at(edges, (rows, self.starts[chosen] - left), 1)
        np.add.at(edges, (rows, self.ends[chosen] - left), -1)
        return np.cumsum(edges[:, :-1], axis=1) > 0


def find_blobs(mask: np.ndarray) -> Blobs:
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    n = len(rows)
    # Runs in row r touch runs of row r-1 that overlap [start - 1, end]; with a global key
    # row * stride + column the touching runs of the previous row are one contiguous slice.
    stride = w + 2
    key_start, key_end = rows * stride + starts, rows * stride + ends
    first = np.searchsorted(key_end, (rows - 1) * stride + starts, side="left")
    last = np.searchsorted(key_start, (rows - 1) * stride + ends, side="right")
    count = np.maximum(last - first, 0)
    src = np.repeat(np.arange(n), count)
    dst = np.repeat(first, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    parent = np.arange(n)
    while True:  # union-find, vectorised: hook larger roots under smaller ones, then compress paths
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        a, b = parent[src], parent[dst]
        if np.array_equal(a, b):
            break
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
    roots, label = np.unique(parent, return_inverse=True)
    return Blobs(rows, starts, ends, label.ravel(), len(roots))


# ---------------------------------------------------------------- framing like MNIST


def mean_depth(mask: np.ndarray, limit: int = 64) -> float:
    """Mean chessboard distance, in px, from a True pixel to the nearest False one: one plus the mean
    number of 3x3 erosions a pixel survives (at most `limit`). 0 for an empty mask."""
    pixels = int(np.count_nonzero(mask))
    if pixels == 0:
        return 0.0
    total = pixels
    for _ in range(limit):
        mask = spread(mask, 3, np.minimum)
        left = int(np.count_nonzero(mask))
        if left == 0:
            break
        total += left
    return total / pixels


def stroke_width(mask: np.ndarray, limit: int = 64) -> float:
    """The typical width in px of the strokes in `mask`: a band w px wide has a mean depth of about w / 4 + 1 / 2.
    Exact for strokes up to 2 * `limit` px wide; wider ones measure less, but still wider than that."""
    return max(1.0, 4 * (mean_depth(mask, limit) - 0.5))


def scaled(ink: np.ndarray, size: tuple[int, int], s: Settings = SETTINGS) -> np.ndarray:
    """`ink` resized to `size` (the 20-px box), its strokes thickened to `s.stroke` where thinner.

    A thin pen on a large page becomes a faint 1-px line at 20 px, which an MNIST model reads as a
    "1" whatever was written. So the width is measured at `s.fine` times the box, and a thin stroke
    is dilated there by the missing width, then box-filtered down: as thick and as bright as MNIST's.
    """
    image = Image.fromarray(ink.astype(np.float32), "F")
    fine = np.asarray(image.resize((size[0] * s.fine, size[1] * s.fine), Image.BILINEAR))
    peak = float(fine.max())
    if peak <= 0:
        return np.asarray(image.resize(size, Image.LANCZOS))
    core = float(np.percentile(fine[fine > 0.1 * peak], 90))  # resampling dims a thin line: its core is ink
    fine = np.clip(fine / core, 0.0, 1.0)
    width = stroke_width(fine > 0.5, limit=math.ceil(s.stroke * s.fine / 2) + 1) / s.fine  # enough to tell thin
    if width >= s.stroke:
        return np.asarray(image.resize(size, Image.LANCZOS))
    grow = math.ceil((s.stroke - width) * s.fine / 2)  # fine px added on each side
    thick = spread(fine.astype(np.float32), 2 * grow + 1, np.maximum)
    return np.asarray(Image.fromarray(thick, "F").resize(size, Image.BOX))


def frame(ink: np.ndarray, s: Settings = SETTINGS) -> np.ndarray:
    """Ink cropped to its box -> longer side 20 px, anti-aliased, strokes at least MNIST-thick ->
    28x28 uint8, centre of mass at the centre."""
    rows, cols = np.nonzero(ink > 0)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = ink.shape
    scale = BOX_SIZE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.clip(scaled(ink, size, s), 0.0, 1.0)
    mass = small.sum()
    if mass <= 0:
        raise NoDigitError("no digit found (the ink vanishes at 28x28)")
    com_r = (small.sum(1) * np.arange(size[1])).sum() / mass
    com_c = (small.sum(0) * np.arange(size[0])).sum() / mass
    top, left = round(CENTRE - com_r), round(CENTRE - com_c)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size[1], IMAGE_SIZE), min(left + size[0], IMAGE_SIZE)
    out[r0:r1, c0:c1] = small[r0 - top:r1 - top, c0 - left:c1 - left]
    return np.round(out * WHITE).astype(np.uint8)


def ink_blobs(ink: np.ndarray, s: Settings = SETTINGS) -> tuple[Blobs, np.ndarray]:
    """The blobs of `ink` and the indices of those that are ink, not specks or shadow edges: their
    strong pixels are at least `min_piece` of the largest blob's. A shadow edge that survives
    the background subtraction is wide but faint, a stroke is dark along its whole length. A flat
    bar (a line ruled under a sum, an underline) is not the measure: drawn darker and longer than
    the digits, it would make them specks. A line drawn under digits and touching them is cleared
    from `ink`, in place (`clear_underline`), and the blobs are found again: the digits come apart.
    Boxes drawn around digits are not kept (`without_boxes`): singles and pages alike ask here."""
    blobs, keep = pieces_of(ink, s)
    cleared = [clear_underline(ink, blobs, i) for i in keep[lines_may_end(blobs)[keep]]]
    if any(cleared):
        blobs, keep = pieces_of(ink, s)
    return blobs, without_printed_lines(ink.shape, blobs.boxes, without_boxes(ink, blobs, keep, s))


def without_printed_lines(shape: tuple[int, int], boxes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`keep` without a line printed down or across the page beside the writing (a notebook's margin line,
    as dark as a pen where a ruling is light): a blob that runs from edge to edge of the picture (within a
    fiftieth), thin the other way (a tenth of its length), and longer by a quarter than any other blob is
    that way. A 1 cut tight to its box runs edge to edge too: alone, or beside digits as tall, it stays."""
    if len(keep) < 2:
        return keep
    top, left, bottom, right = boxes[keep].T
    tall, wide = bottom - top, right - left
    reached = edges_reached(boxes[keep], shape, parts=50)
    down = reached[:, 0] & reached[:, 2] & (10 * wide <= tall)  # few blobs: most pictures none
    across = reached[:, 1] & reached[:, 3] & (10 * tall <= wide)
    lines = [j for j in np.flatnonzero(down) if np.delete(tall, j).max() <= 0.8 * tall[j]]
    lines += [j for j in np.flatnonzero(across) if np.delete(wide, j).max() <= 0.8 * wide[j]]
    return np.delete(keep, lines) if lines else keep


def pieces_of(ink: np.ndarray, s: Settings = SETTINGS) -> tuple[Blobs, np.ndarray]:
    """`ink_blobs` without looking for a line under the digits."""
    blobs = find_blobs(ink > s.faint_ink)
    boxes = blobs.boxes
    flat = boxes[:, 3] - boxes[:, 1] >= 4 * (boxes[:, 2] - boxes[:, 0])
    return blobs, not_specks(blobs.count(ink >= s.strong_ink), s, measure=~flat)


def lines_may_end(blobs: Blobs) -> np.ndarray:
    """Which blobs may stand on a line (`clear_underline` looks closer): 32 px high or more, with a
    short run of rows in their leftmost and in their rightmost column (a quarter of their height at
    most), as a line's ends are, in their bottom quarter unless the blob is twice as wide as it is
    high (a line under a row of digits may fall or rise along it). A cheap look over the runs: the
    digits of a page mostly fail it."""
    boxes, label = blobs.boxes, blobs.label
    height = boxes[:, 2] - boxes[:, 0]
    wide = boxes[:, 3] - boxes[:, 1] >= 2 * height
    may = height >= 32
    for at_edge in (blobs.starts == boxes[label, 1], blobs.ends == boxes[label, 3]):
        lowest = blobs.stat(np.where(at_edge, blobs.rows, -1), np.maximum, -1)
        highest = blobs.stat(np.where(at_edge, blobs.rows, boxes[:, 2].max()), np.minimum, np.inf)
        may &= (lowest - highest < height // 4) & (wide | (lowest >= boxes[:, 2] - height // 4))
    return may


def run_lengths(flags: np.ndarray) -> tuple[int, int]:
    """How many of `flags` are True from its start, and from its end."""
    if flags.all():
        return len(flags), len(flags)
    return int(np.argmin(flags)), int(np.argmin(flags[::-1]))


def bottom_line(mask: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The straight line drawn along the bottom of one blob (`mask`, its box) and reaching beyond what
    stands on it at both ends, as (its middle row in each column, its thickness), or None. Where it
    reaches beyond, the blob's columns hold the line alone: as thick as each other (the pen), on one
    straight line, a thirtieth of the blob's height long or more. It is a sixth of that height thick
    at most, unbroken, and the blob's bottom edge along nine tenths of its length: a 3's round
    bottom between its tail and its side falls below the line through them, a 4's stem goes on below
    its bar (by less than 15 % of the blob's height: a stroke that crosses the line)."""
    h, w = mask.shape
    first, last = np.argmax(mask, 0), h - 1 - np.argmax(mask[::-1], 0)  # a blob's columns all hold ink
    widths = last - first + 1
    before, after = run_lengths(widths <= h // 4)
    if before == w or min(before, after) == 0:  # a bar by itself (`without_underline` and the layout see to it)
        return None
    thick = float(np.median(np.concatenate([widths[:before], widths[w - after:]])))
    before, after = run_lengths(widths <= thick + 2)  # the line alone, up to where what stands on it thickens it
    if min(before, after) < h / 30 or 6 * thick > h:
        return None
    ends = np.concatenate([np.arange(before), np.arange(w - after, w)])
    centres = (first[ends] + last[ends]) / 2
    slope, offset = np.polyfit(ends, centres, 1)
    middle = slope * np.arange(w) + offset
    if abs(slope) > UNDERLINE_TILT or np.abs(middle[ends] - centres).max() > max(1.5, thick / 4):
        return None  # a curve, not a drawn line
    on_line = np.abs(np.arange(h)[:, None] - middle) <= thick / 2 + 1
    below = last - middle - thick / 2 - 1  # how far the blob goes on below the line, in each column
    if (mask & on_line).any(0).mean() < 0.95 or (below > 0).mean() > 0.1 or below.max() > 0.15 * h:
        return None
    return middle, thick


def rises_right(mask: np.ndarray, floor: np.ndarray, reach: float) -> bool:
    """Whether the ink of `mask` just above `floor` (a row per column), up to `reach` px above it, leaves
    it leaning right, as a 2's (or a 7's) diagonal does: its leftmost point is in the lower half, and
    from there its left edge moves right as it rises, a third of a px per px or more, in one stroke
    (no step between rows longer than `reach`). A round bottom widens as it rises, a stem does not
    lean, and a 3's left edge steps from its tail to its round side."""
    rows = np.arange(mask.shape[0])[:, None]
    strip = mask & (rows < floor) & (rows >= floor - reach)
    lines = np.flatnonzero(strip.any(1))
    if len(lines) < 2:
        return False
    edge = np.argmax(strip[lines], axis=1)  # the left edge of the ink in each row, top row first
    low = int(np.argmin(edge))
    return (2 * lines[low] > lines[0] + lines[-1] and edge[0] - edge[low] >= (lines[low] - lines[0]) / 3
            and np.abs(np.diff(edge[:low + 1])).max(initial=0) <= reach)


def clear_underline(ink: np.ndarray, blobs: Blobs, i: int) -> bool:
    """Clear from `ink`, in place, a line drawn under blob `i`'s digits and touching them (an answer
    underlined, a line of a page ruled off: `bottom_line`), and say whether there was one.

    A 2 on its own base looks like one; its base stays where one digit stands on the line, the line is
    less than three times as wide as it, and its stroke comes down to the line from the upper right
    (`rises_right`). (A 7 underlined looks the same, and stays a 2.) Where strokes come down onto the
    line, the upper half of the line stays, and between strokes a quarter of the blob's height apart:
    a round bottom drawn along the line keeps its ends and stays whole. Blobs less than 32 px high
    are too coarse to tell (`lines_may_end` leaves them out)."""
    top, left, bottom, right = blobs.boxes[i]
    h, w = bottom - top, right - left
    mask = blobs.mask([i], ink.shape, (top, left, bottom, right))
    found = bottom_line(mask)
    if found is None:
        return False
    middle, thick = found
    off_line = np.arange(h)[:, None] - middle  # rows below the line's middle, in each column
    above = mask & (off_line < -thick / 2 - 1)
    standing = np.flatnonzero(above.any(0))
    if len(standing) == 0:
        return False
    pieces = find_blobs(above).boxes
    if (w <= 3 * (standing[-1] - standing[0] + 1) and (pieces[:, 2] - pieces[:, 0] >= h / 3).sum() <= 1
            and rises_right(above, middle - thick / 2 - 1, h / 4)):
        return False
    meets = np.flatnonzero((above & (off_line >= -thick / 2 - 3)).any(0))
    close = np.flatnonzero(np.diff(meets) <= h / 4)
    steps = np.zeros(w + 1, dtype=np.int32)
    np.add.at(steps, meets[close], 1)
    np.add.at(steps, meets[close + 1] + 1, -1)
    beneath = np.cumsum(steps[:-1]) > 0
    beneath[meets] = True
    line = mask & (np.abs(off_line) <= thick / 2 + 1) & (~beneath | (off_line > 0))
    ink[top:bottom, left:right][line] = 0.0
    return True


def not_specks(strong: np.ndarray, s: Settings = SETTINGS, measure: np.ndarray | None = None) -> np.ndarray:
    """Indices of the blobs whose strong pixels (`strong`, per blob) are at least `min_piece` of the
    most's, among the blobs `measure` marks (all, if it marks none)."""
    most = strong[measure].max() if measure is not None and measure.any() else strong.max()
    return np.flatnonzero(strong >= max(s.min_piece * most, 1))


def crossings(mask: np.ndarray) -> np.ndarray:
    """The columns of `mask` that a line crosses from top to bottom, and the rows it crosses from side
    to side (the dividers of adjoining boxes, a table's rules), as a boolean image: 90 % of the rows
    (columns) hold ink within a 32nd of the height (width) of the column (row), so a line turned 3
    degrees counts."""
    h, w = mask.shape
    across = near(mask, math.ceil(h / 32), axis=1).mean(0) >= 0.9
    down = near(mask, math.ceil(w / 32), axis=0).mean(1) >= 0.9
    return across[None, :] | down[:, None]


def near(mask: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Where `mask` holds a True within `k` pixels along `axis` (a dilation along one axis, by running sums)."""
    total = np.cumsum(np.pad(mask, [(k + 1, k) if a == axis else (0, 0) for a in (0, 1)]), axis=axis, dtype=np.int32)
    ahead = np.take(total, np.arange(2 * k + 1, total.shape[axis]), axis=axis)
    behind = np.take(total, np.arange(0, total.shape[axis] - 2 * k - 1), axis=axis)
    return ahead > behind


def smallest_digit(shape: tuple[int, int], s: Settings = SETTINGS) -> float:
    """The fewest pixels a digit's longer side spans in a picture of `shape` (`min_digit` of its longer
    side, 2 at least): shorter ink is specks."""
    return max(2.0, s.min_digit * max(shape))


def without_boxes(ink: np.ndarray, blobs: Blobs, keep: np.ndarray, s: Settings = SETTINGS) -> np.ndarray:
    """`keep` without the boxes drawn around digits (a form's fields, a frame), each digit told from
    specks inside its box by itself: a thin pen inside a bold box is the digit. A box is a kept blob
    whose box holds other blobs, when 80 % of its pixels lie in the outer eighth of its box or on lines
    that cross it (`crossings`: the walls between adjoining boxes; a 0, or an oval around the digit,
    has most of its ink further in and crosses nothing) and what it holds is a third of its size or
    more (else specks inside a square 0). Only blobs the size of a digit may be boxes: a picture of
    thousands of specks would otherwise compare every one with every other."""
    boxes = blobs.boxes
    top, left, bottom, right = boxes.T
    frames = keep[np.maximum(bottom - top, right - left)[keep] >= max(3.0, smallest_digit(ink.shape, s))]
    held = ((top > top[frames, None]) & (left > left[frames, None]) & (bottom < bottom[frames, None])
            & (right < right[frames, None]))  # (frames, blobs): blob j lies inside frame i's box
    if not held.any():  # most pictures: no blob holds another
        return keep
    strong = blobs.count(ink >= s.strong_ink)
    dropped, digits = [], []
    for frame, inside in zip(frames, held):
        inside = np.flatnonzero(inside)
        if len(inside) == 0 or strong[inside].max() < 1:
            continue
        height, width = boxes[frame, 2] - boxes[frame, 0], boxes[frame, 3] - boxes[frame, 1]
        pixels = blobs.mask([frame], ink.shape, tuple(boxes[frame]))
        dy, dx = math.ceil(height / 8), math.ceil(width / 8)
        inner = pixels[dy:-dy, dx:-dx] & ~crossings(pixels)[dy:-dy, dx:-dx]
        if inner.sum() > 0.2 * pixels.sum():
            continue
        digit = inside[not_specks(strong[inside], s)]
        tall = max(boxes[digit, 2].max() - boxes[digit, 0].min(), boxes[digit, 3].max() - boxes[digit, 1].min())
        if 3 * tall >= max(height, width):
            dropped.extend([frame, *inside])
            digits.extend(digit)
    if not dropped:
        return keep
    return np.union1d(np.setdiff1d(keep, dropped), digits)


def without_underline(boxes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`keep` without a line drawn under the digit (an answer underlined, a 6 or 9 told apart): the
    lowest kept blob, when it lies wholly below the others, spans half their width or more, and is a
    flat bar: three times as wide as it is tall (a line drawn a little askew is) and a quarter of their
    height at most. A 2's base lifted from its stroke is not wholly below it, a 1's foot leaves a 1."""
    if len(keep) < 2:
        return keep
    bar = keep[np.argmax(boxes[keep, 0])]
    rest = keep[keep != bar]
    top, left, bottom, right = boxes[bar]
    above, rest_left, rest_bottom, rest_right = (boxes[rest, 0].min(), boxes[rest, 1].min(), boxes[rest, 2].max(),
                                                 boxes[rest, 3].max())
    width, height = right - left, bottom - top
    if top >= rest_bottom and 2 * width >= rest_right - rest_left and 3 * height <= width \
            and 4 * height <= rest_bottom - above:
        return rest
    return keep


def digit_ink(ink: np.ndarray, s: Settings = SETTINGS) -> np.ndarray:
    """`ink` with specks, shadow edges, a box drawn around the digit and a line drawn under it removed."""
    blobs, keep = ink_blobs(ink, s)
    boxes = blobs.boxes
    keep = without_underline(boxes, keep)
    box = boxes[keep]
    height, width = box[:, 2].max() - box[:, 0].min(), box[:, 3].max() - box[:, 1].min()
    if max(height, width) < smallest_digit(ink.shape, s):
        raise NoDigitError("no digit found (only specks)")
    return np.where(blobs.mask(keep, ink.shape), ink, 0.0)


def to_mnist(source: Source, s: Settings = SETTINGS, name: str | None = None) -> np.ndarray:
    """One digit in any picture -> uint8 (28, 28), white ink on black, framed as MNIST digits are."""
    image = load_image(source, s, s.digit_side, name)
    try:
        return frame(one_digit(gray_array(image, s.digit_side), s), s)
    except NoDigitError as e:
        raise NoDigitError(about(source_name(source, name), str(e))) from None


def one_digit(gray: np.ndarray, s: Settings = SETTINGS) -> np.ndarray:
    """The ink of the one digit in `gray`. A digit cut tight, its ink reaching all four edges of the
    picture as a digit cut to its box does, is read again with a margin of its paper (`with_margin`),
    as MNIST frames its digits. Cut tight, blocks of the background inside strokes wider than two of
    them kept the strokes' level (read hollow), and a stroke along the edge passed for light falling
    across the page, which the background continues past the edge. Three edges would take in a tight
    photo whose shadow's edge runs across it, and box the shadow. A picture short of the background's
    blocks (`few_blocks`) needs three: its background, opened over squares a quarter of it and going
    on past its edges, takes a stroke along an edge for a shadow and loses it. Where the margin leaves
    nothing, the first reading stands."""
    ink = digit_ink(ink_map(gray, s), s)
    strong = ink >= s.strong_ink
    reached = sum(bool(edge.any()) for edge in (strong[0], strong[-1], strong[:, 0], strong[:, -1]))
    if reached < (3 if few_blocks(gray.shape, s.blocks) else 4):
        return ink
    try:
        return digit_ink(ink_map(with_margin(gray, s), s), s)
    except NoDigitError:
        return ink


def with_margin(gray: np.ndarray, s: Settings = SETTINGS) -> np.ndarray:
    """`gray` framed by `s.margin` of its longer side of its paper's level: the median of the side of
    Otsu's split that `dark_ink` takes for paper (a margin of the ink's level would frame the picture).
    All of `gray`, not a sample: a sample can miss thin strokes, and one side of the split be empty."""
    low, high = extremes(gray)
    threshold = otsu(gray, low)
    paper = gray[gray >= threshold] if dark_ink(gray, low, high, s) else gray[gray < threshold]
    return np.pad(gray, round(s.margin * max(gray.shape)), constant_values=float(np.median(paper)))
