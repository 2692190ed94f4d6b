"""Pictures of runs: the course's grid of digits and plots, a confusion matrix, misclassified digits.

Drawing only: the numbers come from `evaluate`, the file names of a run's plots from `rundir`.
matplotlib runs headless (Agg); every file is written whole (`files.write_atomic`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from digitpi import UserError, files  # noqa: E402
from digitpi.rundir import PLOTS  # noqa: E402


def figure_format(path: Path) -> str:
    """The picture format `path`'s extension names, checked before anything is drawn."""
    formats = FigureCanvasBase.get_supported_filetypes()
    kind = path.suffix.lower().lstrip(".")
    if kind not in formats:
        raise UserError(f"{path}: cannot tell the picture format from the extension {path.suffix or '(none)'!r}; "
                        f"use one of .{', .'.join(sorted(formats))}")
    return kind


def save_figure(fig: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=figure_format(path), dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    files.write_atomic(path, buffer.getvalue())


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


def history_figure(history: dict[str, list[float]], key: str, while_learning: str = "") -> plt.Figure:
    """`key` ('loss' or 'accuracy') per epoch, each curve labelled with what it measures.

    Two curves compare, measured alike after each epoch: on training images (`train_key`) and on validation
    images (`val_key`). The third, `key` itself, is Keras's: the running mean while learning (augmentation,
    label smoothing, dropout), which sits apart from the other two for those reasons, not from a bug.
    `while_learning` names the reasons that apply to this run. Runs saved before `train_key` existed lack it.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    epochs = range(1, len(history[key]) + 1)
    ax.plot(epochs, history[key], "o--", color="tab:blue", alpha=0.45, markersize=4,
            label=f"train, while learning ({while_learning})" if while_learning else "train, while learning")
    if history.get(f"train_{key}"):
        ax.plot(epochs, history[f"train_{key}"], "o-", color="tab:blue", label="train, measured after the epoch")
    if history.get(f"val_{key}"):
        ax.plot(epochs, history[f"val_{key}"], "o-", color="tab:orange", label="validation, measured after the epoch")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cross-entropy" if key == "loss" else key)
    ax.set_title(f"{key.capitalize()}: train vs validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, -0.02, "measured after the epoch: the epoch's final weights in eval mode, images as they are, "
             "plain cross-entropy", fontsize=7, color="0.35")
    return fig


def plot_history(path: Path, history: dict[str, list[float]], key: str, while_learning: str = "") -> None:
    save_figure(history_figure(history, key, while_learning), path)


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
    """Up to `limit` digits the model got wrong, titled; a run with none still gets its picture, saying so."""
    wrong = np.flatnonzero(preds != labels)[:limit]
    if not len(wrong):
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no misclassified digits (of {len(labels):,})", ha="center", va="center")
        save_figure(fig, path)
        return
    titles = [f"true {classes[labels[i]]}, pred {classes[preds[i]]}" for i in wrong]
    save_image_grid(path, images[wrong], titles, cols=6)


def plot_run(out_dir: Path, history: dict, metrics: dict, images: np.ndarray, labels: np.ndarray,
             preds: np.ndarray, classes: Sequence[str], while_learning: str = "") -> None:
    """All four pictures of a run, into its folder; `while_learning` as `plot_history` takes it."""
    plot_history(out_dir / PLOTS["loss"], history, "loss", while_learning)
    plot_history(out_dir / PLOTS["accuracy"], history, "accuracy", while_learning)
    plot_confusion(out_dir / PLOTS["confusion"], np.array(metrics["confusion"]), classes)
    plot_misclassified(out_dir / PLOTS["misclassified"], images, labels, preds, classes)
