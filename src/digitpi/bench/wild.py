"""`digitpi bench wild`: how an exported model reads real handwriting that is not MNIST.

The pictures are a folder in the layout of `../shared/wild-dev`: a `labels.csv` (file, label, lines,
kind, medium, source) beside the pictures, photos, canvas drawings and tiny scans people made of
their own digits. Single digits are read with `predict`'s pipeline and scored per medium, per
source and in all; multi-digit pictures are read as pages and count only when every written line
is read exactly. `--sheet` draws every misread picture beside the 28x28 the model saw, so anyone can
look at the failures. Torch-free: it runs on the Pi itself.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from digitpi import UserError, files, preprocess, reading
from digitpi.exportdir import PRECISIONS

ENV_WILD_DIR = "DIGITPI_WILD_DIR"
DEFAULT_DIR = Path("../shared/wild-dev")  # beside the repository, as CI has it
COLUMNS = ("file", "label", "lines", "kind", "medium", "source")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="an exported model folder (`digitpi export`)")
    parser.add_argument("--data", metavar="DIR",
                        help=f"folder with labels.csv and the pictures (default: ${ENV_WILD_DIR}, else {DEFAULT_DIR})")
    parser.add_argument("--precision", choices=PRECISIONS, help="which exported model to run (default: the runtime's)")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="read every Nth single digit of each source only (a quick sample; default: all)")
    parser.add_argument("--sheet", metavar="FILE.png", help="write the misread pictures and what the model saw")


@dataclass
class Result:
    file: str
    kind: str  # single | multi
    medium: str
    source: str
    expected: str  # the digit, or the page's lines separated by "\n"
    read: str | None  # what the model read (same layout), None when no digit was found or the file failed
    probability: float | None
    error: str | None

    @property
    def right(self) -> bool:
        return self.read == self.expected


def rows_of(folder: Path, every: int) -> list[dict]:
    """The labels.csv rows: every multi-digit picture, and every `every`th single digit of each source."""
    path = folder / "labels.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror} (--data: a folder like ../shared/wild-dev)") from None
    if not rows or any(column not in rows[0] for column in COLUMNS):
        raise UserError(f"{path}: expected the columns {', '.join(COLUMNS)}")
    seen: dict[str, int] = defaultdict(int)
    picked = []
    for row in rows:  # every multi-digit picture: there are few, and each is a page of its own
        if row["kind"] == "multi" or seen[row["source"]] % every == 0:
            picked.append(row)
        seen[row["source"]] += row["kind"] != "multi"
    return picked


def read_one(classifier, folder: Path, row: dict) -> tuple[Result, reading.Page | None]:
    multi = row["kind"] == "multi"
    expected = "\n".join(row["lines"].split()) if multi else row["label"]
    result = Result(row["file"], row["kind"], row["medium"], row["source"].split(" @")[0], expected, None, None, None)
    try:
        page = reading.read(classifier, folder / row["file"], page=multi, name="")
    except preprocess.ImageError as e:
        result.error = str(e)
        return result, None
    result.read = page.text
    result.probability = round(reading.line_probability(page.digits), 4)
    return result, page


def summarize(results: list[Result]) -> dict:
    """Accuracy of single digits per medium, per source and in all; exact reads of multi-digit pictures."""
    singles = [r for r in results if r.kind == "single"]
    multis = [r for r in results if r.kind == "multi"]

    def score(group: list[Result]) -> dict:
        right = sum(r.right for r in group)
        return {"right": right, "pictures": len(group), "accuracy": right / len(group) if group else None}

    by = defaultdict(list)
    for r in singles:
        by[("medium", r.medium)].append(r)
        by[("source", r.source)].append(r)
    return {"single": score(singles),
            "per_medium": {k: score(v) for (what, k), v in sorted(by.items()) if what == "medium"},
            "per_source": {k: score(v) for (what, k), v in sorted(by.items()) if what == "source"},
            "multi": score(multis),
            "multi_reads": [{"file": r.file, "expected": r.expected, "read": r.read, "error": r.error}
                            for r in multis]}


def format_summary(summary: dict) -> str:
    def row(name: str, s: dict) -> str:
        accuracy = f"{100 * s['accuracy']:.1f} %" if s["accuracy"] is not None else "-"
        return f"| {name} | {s['right']} / {s['pictures']} | {accuracy} |"

    lines = ["| single digits | right | accuracy |", "| --- | ---: | ---: |", row("**all**", summary["single"])]
    lines += [row(f"medium: {k}", s) for k, s in summary["per_medium"].items()]
    lines += [row(f"source: {k}", s) for k, s in summary["per_source"].items()]
    lines += ["", f"multi-digit pictures read exactly, every line: {summary['multi']['right']} / "
                  f"{summary['multi']['pictures']}"]
    for m in summary["multi_reads"]:
        got = m["error"] or " / ".join((m["read"] or "").split("\n"))
        mark = "ok" if m["read"] == m["expected"] else "MISREAD"
        lines.append(f"  {mark:8} {m['file']}: {' / '.join(m['expected'].split(chr(10)))} -> {got}")
    return "\n".join(lines)


def contact_sheet(path: Path, folder: Path, misread: list[tuple[Result, reading.Page | None]], width: int = 8) -> None:
    """The misread pictures packed in rows of `width` cells: each picture, every 28x28 the model saw
    of it (enlarged), and a caption "expected -> read" with the picture's file name."""
    cell, side, caption = 104, 96, 28
    entries = [(result, [d.image for d in page.digits] if page is not None else []) for result, page in misread]
    rows: list[list] = [[]]
    for entry in entries:  # greedy packing: a page with many digits may take a row of its own
        if rows[-1] and sum(1 + len(e[1]) for e in rows[-1]) + 1 + len(entry[1]) > width:
            rows.append([])
        rows[-1].append(entry)
    columns = max([width] + [1 + len(images) for _, images in entries])
    sheet = Image.new("RGB", (columns * cell, len(rows) * (caption + cell)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(rows):
        x, y = 0, k * (caption + cell)
        for result, images in row:
            got = (result.read or result.error or "").replace("\n", " / ")
            fits = (1 + len(images)) * cell // 7  # characters of the default font
            draw.text((x + 4, y + 2), f"{result.expected.replace(chr(10), ' / ')} -> {got}"[:fits], fill=(200, 0, 0))
            draw.text((x + 4, y + 14), Path(result.file).name[:16], fill=(90, 90, 90))
            picture = Image.open(folder / result.file).convert("RGB")
            picture.thumbnail((side, side))
            sheet.paste(picture, (x + 4, y + caption))
            for j, image in enumerate(images):
                sheet.paste(Image.fromarray(image).resize((side, side), Image.NEAREST).convert("RGB"),
                            (x + (j + 1) * cell, y + caption))
            x += (1 + len(images)) * cell
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    files.write_atomic(path, buffer.getvalue())


def run(args: argparse.Namespace) -> None:
    from digitpi.runtime import Classifier

    if args.every < 1:
        raise UserError(f"--every must be at least 1, got {args.every}")
    folder = Path(args.data or os.environ.get(ENV_WILD_DIR) or DEFAULT_DIR)
    rows = rows_of(folder, args.every)
    classifier = Classifier.load(args.model, precision=args.precision)
    start = time.perf_counter()
    read = [read_one(classifier, folder, row) for row in rows]
    seconds = time.perf_counter() - start
    results = [result for result, _ in read]
    summary = summarize(results)
    if args.sheet:
        contact_sheet(Path(args.sheet), folder, [(r, page) for r, page in read if not r.right])
    if args.json:
        print(json.dumps({"model": args.model, "data": str(folder), "every": args.every, "seconds": round(seconds, 2),
                          **summary, "results": [asdict(r) for r in results]}, indent=2))
        return
    print(f"digitpi bench wild: {args.model} on {folder} ({len(rows)} pictures, {seconds:.1f} s)")
    print(format_summary(summary))
    if args.sheet:
        print(f"wrote {args.sheet}")
