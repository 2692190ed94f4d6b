"""Read the layout of a page of digits: its written lines top to bottom, each line's digits left to right.

`preprocess` turns a picture into an ink map and one digit into the model's 28x28 input; this module
decides where the digits of a whole page are. Boxes drawn around digits (a form's fields) and lines
drawn under them are dropped first (`preprocess.ink_blobs`). A page photographed askew is turned
level, so its digits stand upright. Lines are bands of blobs of ink, measured across the lines'
slope (what turning leaves, or a writer's lines climbing): the tallest blobs found the bands,
and every other blob joins the band that holds most of its height. Within a line, blobs stacked
above one another are one digit (the detached bar of a 5), loose strokes join their nearest digit,
specks and dashes are dropped, and a blob wider than a digit is cut into touching digits where the
model reads the parts surest (without a model: evenly, where the ink is thinnest). numpy and Pillow
only: it runs on the Raspberry Pi.

    read_page(source) -> [[Digit]]          lines of digits, each with its 28x28 image and its box
    split_digits(source) -> [uint8 (28, 28)] the same digits in reading order, without the layout
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from digitpi.preprocess import (
    MAX_TILT,
    SETTINGS,
    Blobs,
    NoDigitError,
    Settings,
    Source,
    about,
    frame,
    gray_array,
    ink_blobs,
    ink_map,
    load_upright,
    slope_of,
    smallest_digit,
    source_name,
)


@dataclass(frozen=True)
class Layout:
    same_line: float = 0.5  # a blob is on a line when at least this fraction of its height lies in the line's band
    min_line: float = 0.4  # lines of blobs shorter than this fraction of the tallest line's are specks or dashes
    short: float = 0.6  # pieces shorter than this fraction of their line may be parts of a digit (the bar of a 5)
    stacked: float = 0.25  # a short piece is part of the digit above or below it when it overlaps this much of it
    loose_ink: float = 0.5  # a short piece with less ink than this fraction of a typical digit's is a loose stroke,
    loose_gap: float = 1 / 3  # and joins the nearest digit at most this many line heights away
    min_height: float = 0.4  # a digit is at least this fraction of its line's height
    touching: float = 1.35  # a piece wider than this many line heights may be several digits touching:
    widest: float = 1.2  # with a model to judge, cut where it is surest of the parts, each at most this wide,
    cuts_tried: float = 5.0  # among this many columns per line height (the profile's least-ink minima),
    most_cuts: int = 40  # and never more: the judge's work stays bounded on a line of touching digits
    digit_width: float = 0.75  # without a model, cut evenly into parts about this many line heights wide
    most_turn: float = MAX_TILT  # written lines are looked for up to this slope (27 degrees), as rulings are,
    turn_from: float = 0.05  # and a page whose lines slope more (3 degrees) is turned level: its digits upright;
    pair_turn_from: float = 0.1  # 6 degrees where only two digits stand side by side: their slope is less sure


LAYOUT = Layout()
Judge = Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) uint8 digits -> (N,) how sure a model is of each
Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


@dataclass(frozen=True)
class Digit:
    image: np.ndarray  # uint8 (28, 28): what the model sees
    box: Box  # in the picture's own pixels, upright


def read_page(source: Source, s: Settings = SETTINGS, name: str | None = None,
              layout: Layout = LAYOUT, judge: Judge | None = None) -> list[list[Digit]]:
    """The digits of a picture, as written: a list per line, top to bottom, each left to right.
    With a `judge` (a model), digits written touching are cut where it reads the parts surest."""
    image, (width, height) = load_upright(source, s, s.load_side, name)
    try:
        ink = ink_map(gray_array(image, s.load_side), s)
        sx, sy = width / ink.shape[1], height / ink.shape[0]
        return [[Digit(frame(piece, s), (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)))
                 for piece, (left, top, right, bottom) in line] for line in page_pieces(ink, s, layout, judge)]
    except NoDigitError as e:
        raise NoDigitError(about(source_name(source, name), str(e))) from None


def split_digits(source: Source, s: Settings = SETTINGS, name: str | None = None) -> list[np.ndarray]:
    """Every digit of a picture (a row, or a page read line by line) as uint8 (28, 28), in reading order."""
    return [digit.image for line in read_page(source, s, name) for digit in line]


Piece = tuple[np.ndarray, Box]  # a digit's ink, cropped; its box


def page_pieces(ink: np.ndarray, s: Settings = SETTINGS, layout: Layout = LAYOUT, judge: Judge | None = None
                ) -> list[list[Piece]]:
    """The ink of each digit on the page, line by line, with its box in `ink`'s pixels. A page whose
    written lines slope more than `turn_from` has the ink of its kept blobs turned level and read
    again: its digits stand upright, and what this reading dropped (a box drawn level around digits
    that climb) stays dropped."""
    blobs, kept = ink_blobs(ink, s)
    area, boxes = blobs.area, blobs.boxes
    if len(kept) == 0 or np.max(boxes[kept, 2] - boxes[kept, 0]) < smallest_digit(ink.shape, s):
        raise NoDigitError("no digit found (only specks)")  # before the lines: thousands of specks are slow
    slope = line_slope(blobs, kept, ink.shape, layout.most_turn)
    lines = find_lines(kept, boxes, layout, slope)
    beside = neighbours(lines, blobs, slope, layout)
    if beside and abs(slope) > (layout.turn_from if beside > 1 else layout.pair_turn_from):
        kept_ink = np.where(blobs.mask(kept, ink.shape), ink, np.float32(0))  # what was dropped stays dropped
        level, back = levelled(kept_ink, slope)
        return [[(piece, back(box)) for piece, box in line]
                for line in page_pieces(level, s, replace(layout, most_turn=layout.turn_from), judge)]
    # a line's height is its biggest blob's: a digit, where the line's band may also span loose strokes
    heights = [int(np.subtract(*boxes[line[np.argmax(area[line])], [2, 0]])) for line in lines]
    lines = [(line_groups(line, boxes, area, height, layout), height)
             for line, height in zip(lines, heights) if height >= layout.min_line * max(heights)]
    biggest = max(area[group].sum() for groups, _ in lines for group in groups)
    page = []
    for groups, height in lines:
        group_height = np.array([boxes[g, 2].max() - boxes[g, 0].min() for g in groups])
        pieces = []
        for group, tall in zip(groups, group_height):
            if area[group].sum() < s.min_piece * biggest or tall < layout.min_height * height:
                continue
            top, left = boxes[group, 0].min(), boxes[group, 1].min()
            bottom, right = boxes[group, 2].max(), boxes[group, 3].max()
            piece = np.where(blobs.mask(group, ink.shape, (top, left, bottom, right)), ink[top:bottom, left:right], 0.0)
            for offset, part in cut_touching(piece, int(group_height.max()), layout, judge, s, len(group) > 1):
                rows, cols = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0))
                pieces.append((part, (left + offset + int(cols[0]), top + int(rows[0]),
                                      left + offset + int(cols[-1]) + 1, top + int(rows[-1]) + 1)))
        if pieces:
            page.append(pieces)
    return page


def line_slope(blobs: Blobs, kept: np.ndarray, shape: tuple[int, int], most: float, points: int = 8192) -> float:
    """How much the written lines fall per column (rise, if negative), up to `most`: a phone held
    askew, or a writer's lines climbing. The slope (in steps of about 0.02) that gathers the kept ink (about
    `points` of its pixels, taken evenly along its runs: fewer let strokes of a few digits line up by
    chance) onto the fewest rows. Of one digit alone it is the slope of its strokes."""
    runs = np.flatnonzero(np.isin(blobs.label, kept))
    if len(runs) == 0:
        return 0.0
    lengths = blobs.ends[runs] - blobs.starts[runs]
    ends = np.cumsum(lengths)
    picks = np.arange(0, ends[-1], max(1, int(ends[-1]) // points))  # every so many pixels of ink
    at = np.searchsorted(ends, picks, side="right")
    columns = blobs.starts[runs[at]] + picks - (ends[at] - lengths[at])
    return slope_of(blobs.rows[runs[at]], columns, shape, np.linspace(-most, most, 2 * round(most / 0.02) + 1))


def neighbours(lines: list[np.ndarray], blobs: Blobs, slope: float, layout: Layout = LAYOUT) -> int:
    """How many digits stand beside another on their line (blobs at least `short` of the line's tallest,
    each clear of those before it along the line: on a turned page a digit's box reaches over its
    neighbour's), over all lines: the evidence that the lines' slope is the page's. One digit's
    strokes have a slope of their own; two digits alone give the line's to 3-4 degrees, more to 1-2
    (measured on one writer's canvas numbers)."""
    first = blobs.stat(blobs.starts + slope * blobs.rows, np.minimum, np.inf)  # along the line
    last = blobs.stat(blobs.ends + slope * blobs.rows, np.maximum, -np.inf)
    heights = blobs.boxes[:, 2] - blobs.boxes[:, 0]
    count = 0
    for line in lines:
        tall = line[heights[line] >= layout.short * heights[line].max()]
        order = tall[np.argsort(first[tall], kind="stable")]
        count += int((first[order][1:] >= np.maximum.accumulate(last[order])[:-1]).sum())
    return count


def levelled(ink: np.ndarray, slope: float) -> tuple[np.ndarray, Callable[[Box], Box]]:
    """`ink` turned so that lines falling `slope` per column run level (grown to hold its corners, no
    ink in those it uncovers), and a function taking a box (left, top, right, bottom) on it back to
    `ink`'s pixels: the box around the box turned back. The ink map is turned, not the picture: what
    `ink_map` made of the picture's edges (a desk, a dark frame) would not be at the edges any more."""
    angle = math.atan(slope)
    turned = Image.fromarray(ink, "F").rotate(math.degrees(angle), Image.BICUBIC, expand=True)
    turned = np.clip(np.asarray(turned), 0.0, 1.0)  # bicubic overshoots a stroke's edges
    (h, w), (th, tw) = ink.shape, turned.shape
    cos, sin = math.cos(angle), math.sin(angle)

    def back(box: Box) -> Box:
        left, top, right, bottom = box
        xs, ys = np.array([left, right, right, left]) - tw / 2, np.array([top, top, bottom, bottom]) - th / 2
        x, y = cos * xs - sin * ys + w / 2, sin * xs + cos * ys + h / 2
        left, top = min(max(0, math.floor(x.min())), w - 1), min(max(0, math.floor(y.min())), h - 1)
        return left, top, max(left + 1, min(w, math.ceil(x.max()))), max(top + 1, min(h, math.ceil(y.max())))
    return turned, back


def find_lines(kept: np.ndarray, boxes: np.ndarray, layout: Layout = LAYOUT, slope: float = 0.0) -> list[np.ndarray]:
    """Indices of the blobs on each written line, lines top to bottom. The tallest blobs found the
    lines' bands; a blob joins the band holding the most of its height, if that is `same_line` of it.
    Heights are measured across the lines, which fall by `slope` per column: each blob is moved up by
    its centre's fall, so a long line turned a few degrees stays one band."""
    heights = boxes[:, 2] - boxes[:, 0]
    fall = np.round(slope * (boxes[:, 1] + boxes[:, 3]) / 2).astype(boxes.dtype)
    bands: list[tuple[int, int, list[int]]] = []  # top, bottom, blobs
    for i in kept[np.argsort(-heights[kept], kind="stable")]:
        top, bottom = boxes[i, 0] - fall[i], boxes[i, 2] - fall[i]
        overlaps = [min(bottom, b) - max(top, t) for t, b, _ in bands]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best >= 0 and overlaps[best] >= layout.same_line * (bottom - top):
            bands[best][2].append(int(i))
        else:
            bands.append((top, bottom, [int(i)]))
    bands.sort(key=lambda band: band[0] + band[1])
    return [np.array(members) for _, _, members in bands]


def line_groups(line: np.ndarray, boxes: np.ndarray, area: np.ndarray, height: int,
                layout: Layout = LAYOUT) -> list[list[int]]:
    """The blobs of one line grouped into digits, left to right: a short blob under or over the last
    group is a piece of its digit (the bar of a 5), then loose strokes join their neighbours."""
    groups: list[list[int]] = []
    for i in line[np.argsort(boxes[line, 1], kind="stable")]:
        if groups:
            group = groups[-1]
            g_box = [boxes[group, 0].min(), boxes[group, 1].min(), boxes[group, 2].max(), boxes[group, 3].max()]
            overlap = min(boxes[i, 3], g_box[3]) - max(boxes[i, 1], g_box[1])
            short = min(boxes[i, 2] - boxes[i, 0], g_box[2] - g_box[0]) < layout.short * height
            if short and overlap >= layout.stacked * min(boxes[i, 3] - boxes[i, 1], g_box[3] - g_box[1]):
                group.append(int(i))
                continue
        groups.append([int(i)])
    return attach_short(groups, boxes, area, height, layout)


def attach_short(groups: list[list[int]], boxes: np.ndarray, area: np.ndarray, height: int,
                 layout: Layout = LAYOUT) -> list[list[int]]:
    """Loose pieces (short, and with less ink than `loose_ink` of a typical digit: a stroke that came
    loose, the bar of a 5) join the nearest group at most `loose_gap` line heights away instead of
    being read as digits. A small but whole digit (a flat 5) has the ink."""
    def span(group: list[int]) -> tuple[int, int, int]:
        return boxes[group, 1].min(), boxes[group, 3].max(), boxes[group, 2].max() - boxes[group, 0].min()

    typical = np.median([area[g].sum() for g in groups])
    k = 0
    while k < len(groups) and len(groups) > 1:
        left, right, tall = span(groups[k])
        if tall >= layout.short * height or area[groups[k]].sum() >= layout.loose_ink * typical:
            k += 1
            continue
        gaps = [(left - span(groups[k - 1])[1], k - 1) if k > 0 else (np.inf, -1),
                (span(groups[k + 1])[0] - right, k + 1) if k + 1 < len(groups) else (np.inf, -1)]
        gap, other = min(gaps)
        if gap > layout.loose_gap * height:
            k += 1
            continue
        groups[other].extend(groups.pop(k))
        k = max(0, min(k, other) - 1) if other < k else k  # the merged group may now be tall: look again
    return groups


def cut_touching(piece: np.ndarray, height: int, layout: Layout = LAYOUT, judge: Judge | None = None,
                 s: Settings = SETTINGS, joined: bool = False) -> list[tuple[int, np.ndarray]]:
    """(column offset, ink) of each digit in `piece`. A piece wider than `touching` line heights may
    be digits touching: with a `judge` it is cut where the judge reads the parts surest
    (`judged_cuts`), without one into round(width / (`digit_width` x height)) parts at the columns of
    least ink near the even cut positions."""
    w = piece.shape[1]
    if w <= layout.touching * height:
        return [(0, piece)]
    cuts = even_cuts(piece, height, layout) if judge is None else judged_cuts(piece, height, layout, judge, s, joined)
    parts = [(a, piece[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    return [(a, p) for a, p in parts if (p > 0).any()]


def even_cuts(piece: np.ndarray, height: int, layout: Layout = LAYOUT) -> list[int]:
    """The columns `cut_touching` cuts at without a judge, 0 and the width included."""
    w = piece.shape[1]
    count = round(w / (layout.digit_width * height))
    profile = piece.sum(0)
    cuts = [0]
    for k in range(1, count):
        centre, reach = k * w // count, max(1, w // (3 * count))
        lo, hi = max(cuts[-1] + 1, centre - reach), min(w - 1, centre + reach)
        cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else centre)
    return cuts + [w]


def judged_cuts(piece: np.ndarray, height: int, layout: Layout, judge: Judge, s: Settings,
                joined: bool = False) -> list[int]:
    """The cuts (0 and the width included) whose parts the judge is surest of: the largest product of
    its sureness over the parts (so a cut must pay for itself). A part is at least `min_height` tall,
    as a digit is (a dash beside a digit is not cut off to be read as one), and at most `widest` line
    heights wide, but for the whole piece when it is `joined` of several blobs (a digit and a dash or
    loose stroke beside it; one blob that wide is digits touching). Cuts are tried at the local
    minima of the ink profile (a flat stretch's middle), least ink first, a tenth of a line height
    apart, `cuts_tried` per line height up to `most_cuts`. One batch of the judge for every part."""
    w = piece.shape[1]
    profile = piece.sum(0)
    inner = profile[1:-1]
    minima = np.flatnonzero((inner <= profile[:-2]) & (inner <= profile[2:])) + 1
    flats = np.split(minima, np.flatnonzero((np.diff(minima) > 1) | (np.diff(profile[minima]) != 0)) + 1)
    minima = np.array([flat[len(flat) // 2] for flat in flats if flat.size], dtype=np.int64)  # a flat's middle
    most = min(math.ceil(layout.cuts_tried * w / height), layout.most_cuts)
    chosen: list[int] = []
    for c in minima[np.argsort(profile[minima], kind="stable")]:
        if len(chosen) < most and all(abs(int(c) - d) > height // 10 for d in chosen):
            chosen.append(int(c))
    at = [0, *sorted(chosen), w]
    images, fits = [], []
    for j in range(1, len(at)):
        for i in range(j):
            whole = joined and i == 0 and j == len(at) - 1
            if at[j] - at[i] > layout.widest * height and not whole:
                continue
            part = piece[:, at[i]:at[j]]
            rows = np.flatnonzero(part.any(1))
            if rows.size and (whole or rows[-1] + 1 - rows[0] >= layout.min_height * height):
                try:
                    images.append(frame(part, s))
                    fits.append((i, j))
                except NoDigitError:  # the part's ink vanishes at 28x28
                    pass
    if not images:
        return [0, w]
    score = np.log(np.maximum(judge(np.stack(images)), 1e-9))
    best = np.full(len(at), -np.inf)
    best[0] = 0.0
    back = np.zeros(len(at), dtype=np.int64)
    for (i, j), gain in zip(fits, score):  # in order of j: best[i] is final when a part starts at i
        if best[i] + gain > best[j]:
            best[j], back[j] = best[i] + gain, i
    if not np.isfinite(best[-1]):
        return [0, w]
    cuts, j = [w], len(at) - 1
    while j > 0:
        j = int(back[j])
        cuts.append(at[j])
    return cuts[::-1]
