"""Measure a trained model on the real test set: loss, accuracy, per-class accuracy, confusion.

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


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """Counts [true, predicted]."""
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def test_metrics(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> dict:
    """Everything measured on the test split (uint8 images, int64 labels), as plain JSON-ready values."""
    loss, accuracy, preds = train.evaluate(model, torch.from_numpy(images.copy()), torch.from_numpy(labels))
    preds = preds.numpy()
    confusion = confusion_matrix(labels, preds)
    return {
        "test_loss": loss,
        "test_accuracy": accuracy,
        "test_errors": int((preds != labels).sum()),
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
    the odd run."""
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


def evaluate_dirs(run_dirs: list[Path], data_dir: str | None = None, tta: bool = False) -> dict:
    """Re-measure a saved run on the test set; several runs are measured as one ensemble."""
    model, configs = load_runs(run_dirs, tta)
    cfg = configs[0]
    shared_dataset(run_dirs, configs)
    images, labels = data.load_split(cfg.dataset, "test", data_dir or cfg.data_dir)
    metrics = test_metrics(model, images, labels)
    metrics.pop("predictions")
    name = " + ".join(c.model for c in configs) + (" (TTA)" if tta else "")
    return {"run": ", ".join(map(str, run_dirs)), "model": name, "dataset": cfg.dataset, **metrics}


def format_evaluation(result: dict) -> str:
    classes = data.dataset_info(result["dataset"]).classes
    lines = [f"{result['run']}: {result['model']} on {result['dataset']} test set",
             f"test loss      {result['test_loss']:.4f}",
             f"test accuracy  {100 * result['test_accuracy']:.2f}% ({result['test_errors']} errors)",
             "", "per-class accuracy:"]
    lines += [f"  {c:>12}  {100 * a:6.2f}%" for c, a in zip(classes, result["per_class_accuracy"])]
    lines += ["", "confusion (rows: true, columns: predicted):",
              "      " + "".join(f"{i:>6}" for i in range(len(classes)))]
    lines += [f"{i:>6}" + "".join(f"{v:>6}" for v in row) for i, row in enumerate(result["confusion"])]
    return "\n".join(lines)
