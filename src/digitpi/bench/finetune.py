"""`digitpi bench finetune`: what teaching gains on one real writer, measured on their other pictures.

One source of `../shared/wild-dev` (by default the canvas drawings of kitonjicsm/digit-eye, 20 per
digit, whose 1s carry a long flag and are read as 7) is one writer. A few pictures per digit become
samples, read to 28x28 as `digitpi predict` reads them; the rest are the test. A run is fine-tuned
on the samples exactly as `digitpi finetune` does (`finetune.finetune_model`), and the writer's test
pictures and the MNIST test set are read before and after. Each draw of samples is a seed; the
fine-tuned copies are thrown away (wild-dev never trains a model that is kept or shipped).
Top-level imports stay torch-free: the CLI imports this module to build `bench finetune`'s flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from digitpi import UserError, preprocess
from digitpi.bench import cpu_name
from digitpi.bench.wild import DEFAULT_DIR, ENV_WILD_DIR, rows_of
from digitpi.contract import NUM_CLASSES

DEFAULT_WRITER = "kitonjicsm/digit-eye"  # 200 canvas digits of one hand; its flagged 1s read as 7
MNIST_FLOOR = 0.993  # issue 17: MNIST test accuracy after teaching must stay at or above this


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a training run folder (`digitpi train`)")
    parser.add_argument("--data", metavar="DIR",
                        help=f"folder with labels.csv and the pictures (default: ${ENV_WILD_DIR}, else {DEFAULT_DIR})")
    parser.add_argument("--writer", default=DEFAULT_WRITER,
                        help="the source (repository) whose single digits are one writer (default: %(default)s)")
    parser.add_argument("--shots", type=int, default=5, help="samples per digit taught (default: 5)")
    parser.add_argument("--draws", type=int, default=3, help="draws of samples, one seed each (default: 3)")
    parser.add_argument("--data-dir", help="folder holding the four MNIST files")


def writer_pictures(folder: Path, writer: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(28x28 uint8 images, labels, files) of the writer's single digits, read as `digitpi predict` does."""
    rows = [r for r in rows_of(folder, every=1) if r["kind"] == "single" and writer in r["source"]]
    if not rows:
        raise UserError(f"{folder / 'labels.csv'} lists no single digits from a source named {writer!r}")
    images = np.stack([preprocess.to_mnist(folder / r["file"]) for r in rows])
    return images, np.array([int(r["label"]) for r in rows], np.int64), [r["file"] for r in rows]


def draw_split(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """A mask of `shots` samples per digit, drawn by `seed`; the rest are the test."""
    rng = np.random.default_rng(seed)
    taught = np.zeros(len(labels), bool)
    for digit in range(NUM_CLASSES):
        where = np.flatnonzero(labels == digit)
        if len(where) <= shots:
            raise UserError(f"the writer has {len(where)} pictures of {digit}: --shots must be fewer")
        taught[rng.choice(where, shots, replace=False)] = True
    return taught


def per_digit(model, images: np.ndarray, labels: np.ndarray) -> list[float]:
    from digitpi import finetune

    return [finetune.accuracy(model, images[labels == d], labels[labels == d]) for d in range(NUM_CLASSES)]


def run(args: argparse.Namespace) -> None:
    import torch

    from digitpi import data, finetune, rundir
    from digitpi.config import FinetuneConfig

    if args.shots < 1 or args.draws < 1:
        raise UserError("--shots and --draws must be at least 1")
    folder = Path(args.data or os.environ.get(ENV_WILD_DIR) or DEFAULT_DIR)
    images, labels, _ = writer_pictures(folder, args.writer)
    base, run_cfg = rundir.load_checkpoint(args.run)
    mnist_images, mnist_labels = data.load_split("mnist", "test", args.data_dir or run_cfg.data_dir)
    mnist_before = finetune.accuracy(base, mnist_images, mnist_labels)
    rows = []
    for seed in range(args.draws):
        taught = draw_split(labels, args.shots, seed)
        split = finetune.Split(images[taught], labels[taught], images[~taught], labels[~taught])
        start = time.perf_counter()
        tuned = finetune.finetune_model(base, run_cfg, split, FinetuneConfig(seed=seed), args.data_dir)
        seconds = time.perf_counter() - start
        rows.append({"seed": seed, "samples": int(taught.sum()), "test": int((~taught).sum()),
                     "writer_before": finetune.accuracy(base, split.test_images, split.test_labels),
                     "writer_after": finetune.accuracy(tuned.model, split.test_images, split.test_labels),
                     "mnist_after": finetune.accuracy(tuned.model, mnist_images, mnist_labels),
                     "per_digit_before": per_digit(base, split.test_images, split.test_labels),
                     "per_digit_after": per_digit(tuned.model, split.test_images, split.test_labels),
                     "train_seconds": round(tuned.train_seconds, 2), "seconds": round(seconds, 2)})
    result = {"run": str(args.run), "model": run_cfg.model, "writer": args.writer, "pictures": len(labels),
              "shots": args.shots, "mnist_before": mnist_before, "mnist_floor": MNIST_FLOOR, "draws": rows,
              "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    print(json.dumps(result, indent=2) if args.json else format_result(result))


def format_result(result: dict) -> str:
    def pct(value: float, digits: int = 1) -> str:
        return f"{100 * value:.{digits}f} %"

    rows = result["draws"]
    lines = [f"{result['model']} ({result['run']}) taught {result['writer']}: {result['shots']} pictures per digit "
             f"of {result['pictures']}, the rest read before and after; {result['machine']}", "",
             "| draw | samples | writer's test pictures | writer before | writer after | MNIST after | fine-tune s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['seed']} | {r['samples']} | {r['test']} | {pct(r['writer_before'])} | {pct(r['writer_after'])} "
              f"| {pct(r['mnist_after'], 2)} | {r['seconds']:.1f} |" for r in rows]

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    lines.append(f"| mean | | | {pct(mean('writer_before'))} | {pct(mean('writer_after'))} "
                 f"| {pct(mean('mnist_after'), 2)} | {mean('seconds'):.1f} |")
    worst = min(r["mnist_after"] for r in rows)
    lines += ["", f"MNIST test set: {pct(result['mnist_before'], 2)} before, {pct(worst, 2)} after at worst "
                  f"({'at or above' if worst >= result['mnist_floor'] else 'BELOW'} {pct(result['mnist_floor'], 1)})"]
    lines += ["", "| digit | " + " | ".join(str(d) for d in range(NUM_CLASSES)) + " |",
              "| --- |" + " ---: |" * NUM_CLASSES]
    for when in ("before", "after"):
        means = [statistics.fmean(r[f"per_digit_{when}"][d] for r in rows) for d in range(NUM_CLASSES)]
        lines.append(f"| writer {when} | " + " | ".join(f"{100 * m:.0f} %" for m in means) + " |")
    return "\n".join(lines)
