"""`digitpi compare`: train (or reuse) several models, each with its own recipe, and write report.md.

Each model's run folder sits in the report folder (OUT/MODEL); a complete run trained with the same
hyperparameters is reused (and said so), so a second `compare` with one more model trains only that one.
A run trained with other hyperparameters is never reused in silence: compare refuses it and names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from digitpi import UserError, files, pipeline, rundir, train
from digitpi.config import HYPERPARAMETERS, Config, recipe_config
from digitpi.models import create_model


@dataclass(frozen=True)
class Row:
    name: str  # the model's name in the zoo
    config: Config  # what its run was trained with
    metrics: dict  # its run's metrics.json
    size: int  # bytes of its weights file


# what a reused run must share; where the data lay and the device don't
SAME = (*HYPERPARAMETERS, "dataset", "seed", "val_seed")


def differences(saved: Config, wanted: Config) -> list[str]:
    """The settings in which a saved run differs from what would be trained now, as `name=saved (now wanted)`."""
    return [f"{name}={getattr(saved, name)!r} (now {getattr(wanted, name)!r})" for name in SAME
            if getattr(saved, name) != getattr(wanted, name)]


def compare(models: Sequence[str], out_dir: Path, epochs: int | None = None, retrain: bool = False,
            data_dir: str | None = None, progress: bool = True,
            log: Callable[[str], None] = lambda line: None) -> Path:
    """Train each model with its own recipe (or reuse its run in out_dir) and write report.md.

    A complete run is reused only when it was trained with the hyperparameters that would be trained now;
    otherwise a UserError names the differences (`retrain` trains it again instead). `log` hears each choice.
    """
    wanted = {name: recipe_config(model=name, epochs=epochs, data_dir=data_dir) for name in models}
    for name in models:
        create_model(name)  # fail on a typo before training anything
    for name, cfg in wanted.items():  # and on a run that cannot be reused, before training anything
        run_dir = out_dir / name
        if not retrain and rundir.is_complete(run_dir) and (changed := differences(rundir.load_config(run_dir), cfg)):
            raise UserError(f"{run_dir} was trained with other settings: {', '.join(changed)}; "
                            "pass --retrain to train it again, or --out another folder")
    rows = []
    for name, cfg in wanted.items():
        run_dir = out_dir / name
        if retrain or not rundir.is_complete(run_dir):
            log(f"training {name} ({cfg.epochs} epochs) into {run_dir}")
            pipeline.finish_run(train.train(cfg, progress=progress), run_dir)
        else:
            log(f"reusing {run_dir}: trained with the same settings (--retrain trains it again)")
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
