"""Pictures and tables of runs: the course's plots, a confusion matrix, misclassified digits,
and `compare`, which trains (or reuses) several models and writes report.md.

matplotlib runs headless (Agg); every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from digitpi import data  # noqa: E402

PLOTS = {"loss": "loss.png", "accuracy": "accuracy.png", "confusion": "confusion.png",
         "misclassified": "misclassified.png"}


def save_figure(fig: plt.Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def save_image_grid(path: Path, images: np.ndarray, titles: Sequence[str], cols: int = 4) -> None:
    """The course's grid of digits (3x4 for 12 images), each titled."""
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_history(path: Path, history: dict[str, list[float]], key: str) -> None:
    """Train vs validation curve of `key` ('loss' or 'accuracy') per epoch, as the course plots it."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history[key]) + 1)
    ax.plot(epochs, history[key], "o-", label=f"train {key}")
    if history.get(f"val_{key}"):
        ax.plot(epochs, history[f"val_{key}"], "o-", label=f"validation {key}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{key.capitalize()}: train vs validation")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion(path: Path, confusion: np.ndarray, classes: Sequence[str]) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    # log colour scale: the diagonal (~1000) would otherwise hide every mistake (~1-10)
    ax.imshow(np.log1p(confusion), cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if i == j else "black")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45 if len(classes[0]) > 2 else 0)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix on the test set ({confusion.trace()} / {confusion.sum()} right)")
    save_figure(fig, path)


def plot_misclassified(path: Path, images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                       classes: Sequence[str], limit: int = 24) -> None:
    wrong = np.flatnonzero(preds != labels)[:limit]
    if len(wrong) == 0:
        wrong = np.arange(0)
    titles = [f"true {classes[labels[i]]}, pred {classes[preds[i]]}" for i in wrong]
    save_image_grid(path, images[wrong], titles, cols=6)


def plot_run(out_dir: Path, history: dict, metrics: dict, images: np.ndarray, labels: np.ndarray,
             preds: np.ndarray, classes: Sequence[str]) -> None:
    """All four pictures of a run, into its folder."""
    plot_history(out_dir / PLOTS["loss"], history, "loss")
    plot_history(out_dir / PLOTS["accuracy"], history, "accuracy")
    plot_confusion(out_dir / PLOTS["confusion"], np.array(metrics["confusion"]), classes)
    plot_misclassified(out_dir / PLOTS["misclassified"], images, labels, preds, classes)


# ---------------------------------------------------------------- compare


def run_is_complete(run_dir: Path) -> bool:
    return all((run_dir / name).is_file() for name in ("config.json", "metrics.json", "model.safetensors"))


def compare(models: Sequence[str], out_dir: Path, epochs: int | None = None, retrain: bool = False,
            data_dir: str | None = None, progress: bool = True) -> Path:
    """Train each model with its own recipe (or reuse its run in out_dir) and write report.md."""
    from digitpi import config, evaluate, train
    from digitpi import models as zoo

    for name in models:
        zoo.create_model(name)  # fail on a typo before training anything
    rows = []
    for name in models:
        run_dir = out_dir / name
        if retrain or not run_is_complete(run_dir):
            result = train.train(config.recipe_config(model=name, epochs=epochs, data_dir=data_dir),
                                 progress=progress)
            evaluate.finish_run(result, run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        run_config = json.loads((run_dir / "config.json").read_text())
        rows.append((name, run_config, metrics, (run_dir / "model.safetensors").stat().st_size))
    return write_report(out_dir, rows)


def write_report(out_dir: Path, rows: list[tuple[str, dict, dict, int]]) -> Path:
    lines = ["# digitpi model comparison", "",
             "All numbers measured on the real 10,000-image MNIST test set by `digitpi compare`.", "",
             "| model | parameters | test accuracy | test loss | epochs | batch | training time | model size |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, run_config, metrics, size in rows:
        lines.append(f"| {name} | {metrics['params']:,} | {100 * metrics['test_accuracy']:.2f} % | "
                     f"{metrics['test_loss']:.4f} | {run_config['epochs']} | {run_config['batch_size']} | "
                     f"{metrics['train_seconds']:.0f} s | {size / 1024:.0f} KB |")
    best = max(rows, key=lambda r: r[2]["test_accuracy"])
    smallest = min(rows, key=lambda r: r[2]["params"])
    lines += ["", f"Most accurate: **{best[0]}** ({100 * best[2]['test_accuracy']:.2f} %). "
              f"Smallest: **{smallest[0]}** ({smallest[2]['params']:,} parameters).", ""]
    for kind in ("loss", "accuracy", "confusion"):
        lines += [f"## {kind.capitalize()}", "",
                  "| " + " | ".join(name for name, *_ in rows) + " |",
                  "|" + " --- |" * len(rows),
                  "| " + " | ".join(f"![{name} {kind}]({name}/{PLOTS[kind]})" for name, *_ in rows) + " |", ""]
    path = out_dir / "report.md"
    data.write_atomic(path, "\n".join(lines).encode())
    return path
