"""Measure a trained model on the real test set: loss, accuracy, per-class accuracy, confusion.

Functions return numbers; the CLI prints them and `report` draws them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from digitpi import UserError, data, train


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int = data.NUM_CLASSES) -> np.ndarray:
    """Counts [true, predicted]."""
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def test_metrics(model: torch.nn.Module, dataset: str = "mnist", data_dir: str | None = None) -> dict:
    """Everything measured on the test split, as plain JSON-ready values."""
    images, labels = data.load_split(dataset, "test", data_dir)
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


def finish_run(result: train.TrainResult, out_dir: Path, plots: bool = True) -> dict:
    """Evaluate a finished training on the test set, save the run folder, draw its plots."""
    cfg = result.config
    metrics = test_metrics(result.model, cfg.dataset, cfg.data_dir)
    predictions = metrics.pop("predictions")
    train.save_run(result, out_dir, metrics)
    if plots:
        from digitpi import report

        images, labels = data.load_split(cfg.dataset, "test", cfg.data_dir)
        report.plot_run(out_dir, result.history, metrics, images, labels, np.array(predictions),
                        data.dataset_info(cfg.dataset).classes)
    return json.loads((out_dir / "metrics.json").read_text())


def evaluate_dir(run_dir: Path, data_dir: str | None = None) -> dict:
    """Re-measure a saved run on the test set."""
    try:
        model, cfg = train.load_checkpoint(run_dir)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    metrics = test_metrics(model, cfg.dataset, data_dir or cfg.data_dir)
    metrics.pop("predictions")
    return {"run": str(run_dir), "model": cfg.model, "dataset": cfg.dataset, **metrics}


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
