"""After the training loop: measure the model on the test set, save the run folder, draw its plots.

The second half of `digitpi train`, shared by `digitpi compare`, `digitpi bench train --out` and
the course notebook. Each step stays in its own module (`evaluate` measures, `rundir` saves,
`report` draws); this is where they meet, so none of them imports another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from digitpi import data, evaluate, report, rundir, train
from digitpi.models import count_params


def finish_run(result: train.TrainResult, out_dir: Path, plots: bool = True, extra: dict | None = None) -> dict:
    """Test a finished training, save it in `out_dir` with its plots; returns what metrics.json holds,
    which also keeps `extra` (what `finetune` measured, for one)."""
    cfg = result.config
    images, labels = data.load_split(cfg.dataset, "test", cfg.data_dir)
    metrics = evaluate.measure(result.model, images, labels)
    predictions = np.array(metrics.pop("predictions"))
    metrics |= {
        "params": count_params(result.model),
        "train_seconds": round(result.train_seconds, 2),
        "best_epoch": result.best_epoch,
        "data_sha256": result.data_checksums,
        "torch": torch.__version__,
        "device": result.device,
        "processes": result.processes,
        "amp": result.amp,
        **(extra or {}),
    }
    rundir.save_run(out_dir, result.model, cfg, result.history, metrics)
    if plots:
        report.plot_run(out_dir, result.history, metrics, images, labels, predictions,
                        data.dataset_info(cfg.dataset).classes, train.while_learning(cfg))
    return metrics
