"""`digitpi bench train`: time to 99 % test accuracy and final accuracy of our recipes, against
two references re-implemented in the zoo and measured in the same run on the same machine.

Time is wall clock from reading the IDX files to the end of the epoch that first reaches the
target; the test set is measured after each epoch outside the clock (it is not part of training).
Top-level imports stay torch-free: the CLI imports this module to build `bench train`'s flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from digitpi import UserError, config, data, files
from digitpi.bench import cpu_name
from digitpi.contract import IMAGE_SIZE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes", default="fast,tiny", help="our recipes, comma-separated (default: fast,tiny)")
    parser.add_argument("--references", default=",".join(config.REFERENCES),
                        help="reference recipes, comma-separated, or '' for none (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per recipe of ours (default: 3)")
    parser.add_argument("--quick", action="store_true",
                        help="train each reference for one epoch only (its time to target is then a lower bound)")
    parser.add_argument("--full", action="store_true",
                        help="train references to the end of their schedule (default: stop once they reach the target)")
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach (default: 0.99)")
    parser.add_argument("--data-dir", help="folder holding the four MNIST files")
    parser.add_argument("--out", metavar="DIR",
                        help="also save each run as DIR/RECIPE-seedN: a run folder for `digitpi evaluate` and `export`")


@dataclass
class Measurement:
    recipe: str
    model: str
    seed: int
    params: int
    flops: int  # forward FLOPs per image (2 x multiply-adds of convs and linears)
    epochs: int
    data_seconds: float  # reading and verifying the IDX files
    train_seconds: float
    images_per_second: float  # training throughput
    seconds_to_target: float | None  # None: never reached
    accuracy_per_epoch: list[float]  # test accuracy after each epoch
    test_accuracy: float  # of the model training keeps (best epoch on validation, else the last): what a user gets


def forward_flops(model) -> int:
    """FLOPs of one forward pass on one image, counted by hooks on convolutions and linears."""
    import torch

    total = 0

    def count(module, _inputs, output) -> None:
        nonlocal total
        weight = module.weight
        per_output = weight[0].numel()  # multiply-adds per output value
        total += 2 * per_output * output[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    for h in hooks:
        h.remove()
    return total


def measure(recipe: str, seed: int, target: float, data_dir: str | None, epochs: int | None = None,
            stop_at_target: bool = False, out_dir: Path | None = None) -> Measurement:
    import torch

    from digitpi import models, pipeline, train

    start = time.perf_counter()
    images, labels = data.load_split("mnist", "train", data_dir)
    x, y = torch.from_numpy(images.copy()), torch.from_numpy(labels)
    data_seconds = time.perf_counter() - start
    test_images, test_labels = data.load_split("mnist", "test", data_dir)
    tx, ty = torch.from_numpy(test_images.copy()), torch.from_numpy(test_labels)

    cfg = config.recipe_config(recipe, seed=seed, epochs=epochs, data_dir=data_dir)
    accuracies: list[float] = []
    reached: list[float] = []

    def on_epoch_end(model, _epoch: int, seconds: float) -> bool:
        _, accuracy, _ = train.evaluate(model, tx, ty)
        model.train()
        accuracies.append(accuracy)
        if accuracy >= target and not reached:
            reached.append(data_seconds + seconds)
        return stop_at_target and bool(reached)

    result = train.train(cfg, on_epoch_end=on_epoch_end, progress=False, train_images=x, train_labels=y)
    if out_dir is not None:  # saving measures the test set already
        kept_accuracy = pipeline.finish_run(result, out_dir / f"{recipe}-seed{seed}", plots=False)["test_accuracy"]
    else:
        _, kept_accuracy, _ = train.evaluate(result.model, tx, ty)
    n_train = len(x) - int(round(len(x) * cfg.val_split))
    return Measurement(
        recipe=recipe, model=cfg.model, seed=seed, params=models.count_params(result.model),
        flops=forward_flops(models.create_model(cfg.model, **cfg.model_args)), epochs=cfg.epochs,
        data_seconds=data_seconds, train_seconds=result.train_seconds,
        images_per_second=n_train * len(accuracies) / result.train_seconds,
        seconds_to_target=reached[0] if reached else None, accuracy_per_epoch=accuracies,
        test_accuracy=kept_accuracy,
    )


def summarize(runs: list[Measurement], reference_seconds: dict[str, float | None], quick: bool) -> dict:
    first = runs[0]
    reached = [r.seconds_to_target for r in runs if r.seconds_to_target is not None]
    finals = [r.test_accuracy for r in runs]
    row = {
        "recipe": first.recipe, "model": first.model, "params": first.params, "flops": first.flops,
        "epochs": first.epochs, "epochs_run": max(len(r.accuracy_per_epoch) for r in runs), "seeds": len(runs),
        "train_seconds_mean": statistics.mean(r.train_seconds for r in runs),
        "images_per_second": statistics.mean(r.images_per_second for r in runs),
        "seconds_to_target_mean": statistics.mean(reached) if len(reached) == len(runs) else None,
        "seconds_to_target_worst": max(reached) if len(reached) == len(runs) else None,
        "runs_reaching_target": len(reached),
        "test_accuracy_mean": statistics.mean(finals), "test_accuracy_worst": min(finals),
        "quick": quick,
        "speedup": {},
    }
    if row["seconds_to_target_worst"]:
        for name, ref in reference_seconds.items():
            row["speedup"][name] = ref / row["seconds_to_target_worst"] if ref else None
    return row


def format_table(rows: list[dict], target: float) -> str:
    head = ["recipe", "model", "params", "MFLOPs/img", "epochs", "seeds", "train s", "img/s",
            f"s to {100 * target:.1f}% (mean / worst)", "test acc (mean / worst)"]
    refs = sorted({name for row in rows for name in row["speedup"]})
    head += [f"x faster than {r}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        if row["seconds_to_target_mean"] is not None:
            to_target = f"{row['seconds_to_target_mean']:.1f} / {row['seconds_to_target_worst']:.1f}"
        else:
            to_target = f"not reached ({row['runs_reaching_target']}/{row['seeds']} runs)"
        if row["quick"]:
            to_target += " (1 epoch only)"
        epochs = str(row["epochs"]) if row["epochs_run"] == row["epochs"] else f"{row['epochs_run']} of {row['epochs']}"
        cells = [row["recipe"], row["model"], f"{row['params']:,}", f"{row['flops'] / 1e6:.1f}", epochs,
                 str(row["seeds"]), f"{row['train_seconds_mean']:.1f}", f"{row['images_per_second']:,.0f}", to_target,
                 f"{100 * row['test_accuracy_mean']:.2f} % / {100 * row['test_accuracy_worst']:.2f} %"]
        for r in refs:
            ratio = row["speedup"].get(r)
            if ratio:
                cells.append(f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x")  # 0.37x, 3.4x, 17x
            else:  # None: the reference never reached the target; absent: this row is a reference or never did
                cells.append("reference never got there" if r in row["speedup"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    ours = [r for r in args.recipes.split(",") if r]
    out_dir = Path(args.out) if args.out else None
    references = [r for r in args.references.split(",") if r]
    # Mistakes end the benchmark before its first minute of training, not after it
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    if not ours + references:
        raise UserError("nothing to measure: name --recipes, --references or both")
    try:
        for recipe in ours + references:
            config.recipe_config(recipe)
    except ValueError as e:  # an unknown name
        raise UserError(str(e)) from None
    # A file at --out, or another benchmark writing it: one line now, not after the first run
    with files.writing(out_dir) if out_dir else contextlib.nullcontext():
        measure_all(args, ours, references, out_dir)


def measure_all(args: argparse.Namespace, ours: list[str], references: list[str], out_dir: Path | None) -> None:
    import torch

    rows, reference_seconds = [], {}
    for recipe in references:
        m = measure(recipe, 0, args.target, args.data_dir, epochs=1 if args.quick else None,
                    stop_at_target=not args.full, out_dir=out_dir)
        # Quick mode: a reference that did not reach the target in one epoch needs at least that long.
        lower_bound = m.data_seconds + m.train_seconds if args.quick else None
        reference_seconds[recipe] = m.seconds_to_target or lower_bound
        rows.append(summarize([m], {}, args.quick))
    for recipe in ours:
        runs = [measure(recipe, seed, args.target, args.data_dir, out_dir=out_dir) for seed in range(args.seeds)]
        rows.append(summarize(runs, reference_seconds, quick=False))
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "target": args.target, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"digitpi bench train, {result['date']}, {machine}")
        print(format_table(rows, args.target))
        if args.quick:
            print("Quick mode: references trained one epoch; their speedups are lower bounds.")
        elif not args.full:
            print("References stopped at the epoch that reached the target; `--full` runs their whole schedule.")


