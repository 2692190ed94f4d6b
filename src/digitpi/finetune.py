"""`digitpi finetune`: teach a trained run one person's handwriting, on the PC, in a minute or less.

The run's weights are trained a little further, by the run's own recipe at a tenth of its learning
rate, on the user's samples (`digitpi.samples`) mixed with MNIST training images ("replay": without
them a few hundred samples would pull the model away from everything else it reads). Part of each
digit's samples is held out; before/after accuracy on them and on the MNIST test set says whether
it helped. The result is an ordinary run folder (`rundir`) that `digitpi export` takes to the Pi.
Knobs: `config.FinetuneConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digitpi import UserError, data, pipeline, rundir, samples, train
from digitpi.config import Config, FinetuneConfig
from digitpi.contract import NUM_CLASSES


@dataclass(frozen=True)
class Split:
    train_images: np.ndarray  # uint8 (N, 28, 28): the samples the model is taught
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray  # the held-out samples, only measured
    test_labels: np.ndarray


@dataclass
class Result(train.TrainResult):
    """What `train.train` returns (its model the fine-tuned one, in eval mode; its config the run's recipe,
    shortened and slowed), and what the mix held."""
    images_per_epoch: int = 0  # samples (repeated) + MNIST replay
    repeats: int = 0  # how many times each training sample appears per epoch


def split_samples(images: np.ndarray, labels: np.ndarray, holdout: float, seed: int) -> Split:
    """Hold out `holdout` of each digit's samples (rounded, at least one of a digit that has two or
    more, never its last one), drawn by `seed`: every digit is measured, every digit is taught."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for digit in range(NUM_CLASSES):
        where = rng.permutation(np.flatnonzero(labels == digit))
        count = min(len(where) - 1, max(1, round(holdout * len(where)))) if holdout and len(where) else 0
        test[where[:count]] = True
    return Split(images[~test], labels[~test], images[test], labels[test])


def mix(split: Split, cfg: FinetuneConfig, dataset: str,
        data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The images one fine-tuning epoch runs over: `cfg.replay` MNIST training images drawn by seed,
    and the training samples repeated until they are `cfg.share` of the whole. Returns (images,
    labels, repeats)."""
    rng = np.random.default_rng(cfg.seed)
    mnist_images, mnist_labels = data.load_split(dataset, "train", data_dir)
    pick = rng.choice(len(mnist_images), size=min(cfg.replay, len(mnist_images)), replace=False)
    n = len(split.train_labels)
    repeats = max(1, math.ceil(cfg.share / (1 - cfg.share) * len(pick) / n)) if cfg.share < 1 else 1
    images = np.concatenate([mnist_images[pick], np.tile(split.train_images, (repeats, 1, 1))])
    labels = np.concatenate([mnist_labels[pick], np.tile(split.train_labels, repeats)])
    return torch.from_numpy(images), torch.from_numpy(labels), repeats


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of `images` the model reads right; None when there are none."""
    if not len(images):
        return None
    return train.evaluate(model, torch.from_numpy(np.array(images)), torch.from_numpy(labels))[1]  # a writable copy


def finetune_model(model: nn.Module, run_cfg: Config, split: Split, cfg: FinetuneConfig,
                   data_dir: str | None = None, progress: bool = False) -> Result:
    """`model` (left untouched) trained further on the mix of `split.train_*` and MNIST; a new model."""
    if not len(split.train_labels):
        raise UserError("no samples left to train on: collect more, or lower --holdout")
    loop_cfg = dataclasses.replace(run_cfg, epochs=cfg.epochs, lr=run_cfg.lr * cfg.lr_scale, val_split=0.0,
                                   seed=cfg.seed, data_dir=data_dir or run_cfg.data_dir,
                                   device="auto", amp="auto")  # this machine's, not the one the run trained on
    images, labels, repeats = mix(split, cfg, loop_cfg.dataset, loop_cfg.data_dir)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = train.train(loop_cfg, progress=progress, train_images=images, train_labels=labels, initial_state=state)
    return Result(**vars(result), images_per_epoch=len(labels), repeats=repeats)


def finetune_run(run_dir: Path, source: Path, out_dir: Path, cfg: FinetuneConfig | None = None,
                 data_dir: str | None = None, progress: bool = True, skipped: list[str] | None = None) -> dict:
    """Fine-tune the run in `run_dir` on the samples in `source` and save it as a run in `out_dir`;
    returns what was measured, which the new run's metrics.json keeps under "finetune". With
    `skipped`, a picture of a folder per digit that cannot be read is left out, its error kept there."""
    start = time.perf_counter()
    cfg = cfg or FinetuneConfig()
    base, run_cfg = rundir.load_checkpoint(run_dir)
    if run_cfg.dataset != "mnist":
        raise UserError(f"{run_dir} was trained on {run_cfg.dataset}: only MNIST runs read digits")
    images, labels = samples.read_samples(source, skipped)
    if not len(labels):
        raise UserError(f"{source} holds no samples: collect some with `digitpi serve --collect`")
    split = split_samples(images, labels, cfg.holdout, cfg.seed)
    test_images, test_labels = data.load_split(run_cfg.dataset, "test", data_dir or run_cfg.data_dir)
    before = {"holdout": accuracy(base, split.test_images, split.test_labels),
              "mnist": accuracy(base, test_images, test_labels)}
    tuned = finetune_model(base, run_cfg, split, cfg, data_dir, progress)
    report = {
        "base_run": str(run_dir.resolve()), "samples": str(source.resolve()), "config": dataclasses.asdict(cfg),
        "per_digit": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
        "trained_on": len(split.train_labels), "held_out": len(split.test_labels),
        "repeats": tuned.repeats, "images_per_epoch": tuned.images_per_epoch,
        "holdout_before": before["holdout"],
        "holdout_after": accuracy(tuned.model, split.test_images, split.test_labels),
        "mnist_before": before["mnist"], "train_seconds": round(tuned.train_seconds, 2),
    }
    metrics = pipeline.finish_run(tuned, out_dir, extra={"finetune": report})  # MNIST after: its test_accuracy
    return {**report, "mnist_after": metrics["test_accuracy"], "seconds": round(time.perf_counter() - start, 2)}


def format_report(report: dict) -> str:
    """Before/after, as `digitpi finetune` prints it."""

    def percent(value: float | None) -> str:
        return "   -   " if value is None else f"{100 * value:6.2f} %"

    return "\n".join([
        f"samples: {sum(report['per_digit']):,} ({', '.join(f'{d}: {n}' for d, n in enumerate(report['per_digit']))})",
        f"trained on {report['trained_on']:,} samples (each {report['repeats']}x per epoch, augmented) with "
        f"{report['images_per_epoch'] - report['repeats'] * report['trained_on']:,} MNIST training images, "
        f"{report['config']['epochs']} epochs: {report['train_seconds']:.1f} s ({report['seconds']:.1f} s in all)",
        f"{'':<28}{'before':>9}  {'after':>9}",
        f"{'held-out samples (' + str(report['held_out']) + ')':<28}{percent(report['holdout_before']):>9}  "
        f"{percent(report['holdout_after']):>9}",
        f"{'MNIST test set':<28}{percent(report['mnist_before']):>9}  {percent(report['mnist_after']):>9}",
    ])
