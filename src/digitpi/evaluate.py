"""Measure a trained model on the real test set (or on the training images its run held out for
validation): loss, accuracy, per-class accuracy, confusion.

Functions return numbers: nothing is saved or drawn here. The CLI prints them, `pipeline` saves
them with a run (`rundir`) and `report` draws them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from digitpi import UserError, data, rundir, train
from digitpi.config import Config
from digitpi.contract import NUM_CLASSES

SPLITS = {"test": "test", "validation": "val"}  # what `evaluate_dirs` measures on: its metrics' key prefix


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """Counts [true, predicted]."""
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def measure(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, split: str = "test") -> dict:
    """Everything measured on a split (uint8 images, int64 labels), as plain JSON-ready values;
    on validation images the keys read `val_*`, so the two are never mistaken for each other."""
    loss, accuracy, preds = train.evaluate(model, torch.from_numpy(images.copy()), torch.from_numpy(labels))
    preds = preds.numpy()
    confusion = confusion_matrix(labels, preds)
    prefix = SPLITS[split]
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_accuracy": accuracy,
        f"{prefix}_errors": int((preds != labels).sum()),
        "per_class_accuracy": (confusion.diagonal() / confusion.sum(1)).tolist(),
        "confusion": confusion.tolist(),
        "predictions": preds.tolist(),
    }


TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (down, right) in pixels


def shifted(x: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """Images moved by whole pixels, zeros (background) shifted in."""
    if not (down or right):  # unshifted: no pad and crop in the graph an ensemble exports
        return x
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return padded[..., 1 - down:1 - down + h, 1 - right:1 - right + w]


class Ensemble(torch.nn.Module):
    """Log of the mean probability of several models, each optionally over shifted copies (test-time
    augmentation).

    Returned as logits, so `train.evaluate` and the runtime's softmax work unchanged: softmax of the
    output is the mean probability. Computed as logsumexp of the log-probabilities minus log(count),
    which stays finite where a probability underflows to 0 in float32 (its plain log would be -inf);
    `runtime.log_mean_softmax` is its NumPy twin and `digitpi export` writes it into one ONNX graph.
    """

    def __init__(self, members: list[torch.nn.Module], tta: bool = False) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([m(shifted(x, *s)).log_softmax(1) for m in self.members for s in self.shifts])
        return torch.logsumexp(log_probs, 0) - math.log(len(log_probs))


def shared_dataset(run_dirs: list[Path], configs: list[Config]) -> str:
    """The dataset every run of an ensemble was trained on: members must read the same classes from
    the same input, or averaging their probabilities means nothing. A mix is a one-line error naming
    the odd run, and so is a run named twice (a slip in a brace list would weigh it double)."""
    seen: set[Path] = set()
    for run_dir in run_dirs:
        if run_dir.resolve() in seen:
            raise UserError(f"{run_dir} is named twice: an ensemble's members are different runs")
        seen.add(run_dir.resolve())
    first = configs[0].dataset
    odd = next(((d, c.dataset) for d, c in zip(run_dirs, configs) if c.dataset != first), None)
    if odd:
        raise UserError(f"runs of an ensemble must share a dataset: {run_dirs[0]} was trained on {first}, "
                        f"{odd[0]} on {odd[1]}")
    return first


def load_runs(run_dirs: list[Path], tta: bool = False) -> tuple[torch.nn.Module, list[Config]]:
    """The model of saved runs: one run's own, or several (or one with TTA) as one `Ensemble`."""
    loaded = [rundir.load_checkpoint(run_dir) for run_dir in run_dirs]
    configs = [c for _, c in loaded]
    single = len(loaded) == 1 and not tta
    return (loaded[0][0] if single else Ensemble([m for m, _ in loaded], tta).eval()), configs


def held_out(run_dirs: list[Path], configs: list[Config]) -> Config:
    """The config whose validation split every run held out: an ensemble's members are measured together
    only on images none of them trained on, so they must share `val_split` and the split's seed."""
    split_of = [(c.val_split, c.seed if c.val_seed is None else c.val_seed) for c in configs]
    none = next((d for d, (share, _) in zip(run_dirs, split_of) if share == 0), None)
    if none:
        raise UserError(f"{none} held no training images out for validation: train it with --val-split 0.1")
    odd = next(((d, s) for d, s in zip(run_dirs, split_of) if s != split_of[0]), None)
    if odd:
        raise UserError(f"runs measured together must hold out the same validation images: {run_dirs[0]} held out "
                        f"{split_of[0][0]:.0%} by seed {split_of[0][1]}, {odd[0]} {odd[1][0]:.0%} by seed "
                        f"{odd[1][1]}; train them with one --val-seed")
    return configs[0]


def evaluate_dirs(run_dirs: list[Path], data_dir: str | None = None, tta: bool = False,
                  split: str = "test") -> dict:
    """Re-measure a saved run on the test set, or on the training images it held out for validation
    (`split="validation"`), where an ensemble's members are chosen; several runs are measured as one ensemble."""
    model, configs = load_runs(run_dirs, tta)
    cfg = configs[0]
    shared_dataset(run_dirs, configs)
    if split == "validation":
        cfg = held_out(run_dirs, configs)
        images, labels = data.load_split(cfg.dataset, "train", data_dir or cfg.data_dir)
        _, val_idx = train.split_train_val(len(images), cfg)
        images, labels = images[val_idx.numpy()], labels[val_idx.numpy()]
    else:
        images, labels = data.load_split(cfg.dataset, "test", data_dir or cfg.data_dir)
    metrics = measure(model, images, labels, split)
    metrics.pop("predictions")
    name = " + ".join(c.model for c in configs) + (" (TTA)" if tta else "")
    return {"run": ", ".join(map(str, run_dirs)), "model": name, "dataset": cfg.dataset, "split": split, **metrics}


def format_evaluation(result: dict) -> str:
    classes = data.dataset_info(result["dataset"]).classes
    split, prefix = result["split"], SPLITS[result["split"]]
    width = len(split) + 11  # "test accuracy  99.12%": the values in one column
    lines = [f"{result['run']}: {result['model']} on {result['dataset']} {split} set",
             f"{split} loss".ljust(width) + f"{result[f'{prefix}_loss']:.4f}",
             f"{split} accuracy".ljust(width) + f"{100 * result[f'{prefix}_accuracy']:.2f}% "
             f"({result[f'{prefix}_errors']} errors)",
             "", "per-class accuracy:"]
    lines += [f"  {c:>12}  {100 * a:6.2f}%" for c, a in zip(classes, result["per_class_accuracy"])]
    lines += ["", "confusion (rows: true, columns: predicted):",
              "      " + "".join(f"{i:>6}" for i in range(len(classes)))]
    lines += [f"{i:>6}" + "".join(f"{v:>6}" for v in row) for i, row in enumerate(result["confusion"])]
    return "\n".join(lines)
