"""`digitpi compare`: train (or reuse) several models, each with its own recipe, and write report.md.

Each model's run folder sits in the report folder (OUT/MODEL); a complete run is reused, so a
second `compare` with one more model trains only that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from digitpi import files, pipeline, rundir, train
from digitpi.config import Config, recipe_config
from digitpi.models import create_model


@dataclass(frozen=True)
class Row:
    name: str  # the model's name in the zoo
    config: Config  # what its run was trained with
    metrics: dict  # its run's metrics.json
    size: int  # bytes of its weights file


def compare(models: Sequence[str], out_dir: Path, epochs: int | None = None, retrain: bool = False,
            data_dir: str | None = None, progress: bool = True) -> Path:
    """Train each model with its own recipe (or reuse its run in out_dir) and write report.md."""
    for name in models:
        create_model(name)  # fail on a typo before training anything
    rows = []
    for name in models:
        run_dir = out_dir / name
        if retrain or not rundir.is_complete(run_dir):
            result = train.train(recipe_config(model=name, epochs=epochs, data_dir=data_dir), progress=progress)
            pipeline.finish_run(result, run_dir)
        rows.append(Row(name, rundir.load_config(run_dir), rundir.load_metrics(run_dir),
                        (run_dir / rundir.CHECKPOINT).stat().st_size))
    return write_report(out_dir, rows)


def write_report(out_dir: Path, rows: list[Row]) -> Path:
    lines = ["# digitpi model comparison", "",
             "All numbers measured on the real 10,000-image MNIST test set by `digitpi compare`.", "",
             "| model | parameters | test accuracy | test loss | epochs | batch | training time | model size |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        m = row.metrics
        lines.append(f"| {row.name} | {m['params']:,} | {100 * m['test_accuracy']:.2f} % | "
                     f"{m['test_loss']:.4f} | {row.config.epochs} | {row.config.batch_size} | "
                     f"{m['train_seconds']:.0f} s | {row.size / 1024:.0f} KB |")
    best = max(rows, key=lambda r: r.metrics["test_accuracy"])
    smallest = min(rows, key=lambda r: r.metrics["params"])
    lines += ["", f"Most accurate: **{best.name}** ({100 * best.metrics['test_accuracy']:.2f} %). "
              f"Smallest: **{smallest.name}** ({smallest.metrics['params']:,} parameters).", ""]
    for kind in ("loss", "accuracy", "confusion"):
        lines += [f"## {kind.capitalize()}", "",
                  "| " + " | ".join(row.name for row in rows) + " |",
                  "|" + " --- |" * len(rows),
                  "| " + " | ".join(f"![{row.name} {kind}]({row.name}/{rundir.PLOTS[kind]})" for row in rows) + " |",
                  ""]
    path = out_dir / "report.md"
    files.write_atomic(path, "\n".join(lines).encode())
    return path
