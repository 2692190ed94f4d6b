"""Choose an ensemble's members on validation digits: train candidates on one shared 54k/6k split
(`val_seed=0`, whatever each candidate's seed), keep each one's last-epoch logits on the 6,000 held-out
images, then print every combination's accuracy and how many errors its members share.

The last epoch, as the final fit on all 60,000 images keeps it: `digitpi evaluate --validation` reads
the run's kept weights, which with a validation split are its best epoch on these very images.

    python benchmarks/ensemble_screen.py train OUT.pt RECIPE SEED [FIELD=VALUE ...]
        e.g. shear=15, model=best5_cnn, 'model_args={"kernel": 7}': a field of `digitpi train`, typed as its flag
    python benchmarks/ensemble_screen.py read OUT.pt [OUT.pt ...]
(needs DIGITPI_DATA_DIR or the cache)
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch

from digitpi import data, train
from digitpi.cli import add_config_flags
from digitpi.config import recipe_config


def train_candidate(out: str, recipe: str, seed: str, *flags: str) -> None:
    parser = argparse.ArgumentParser(prog="ensemble_screen.py train")
    add_config_flags(parser)  # the train command's flags, so a value is read as `digitpi train` reads it
    pairs = (flag.split("=", 1) for flag in flags)
    overrides = vars(parser.parse_args([f"--{field.replace('_', '-')}={value}" for field, value in pairs]))
    cfg = recipe_config(recipe, **{**overrides, "seed": int(seed), "val_split": 0.1, "val_seed": 0})
    images, labels = data.load_split(cfg.dataset, "train", cfg.data_dir)
    _, val_idx = train.split_train_val(len(images), cfg)
    x, y = torch.from_numpy(images.copy())[val_idx], torch.from_numpy(labels)[val_idx]
    kept = {}

    @torch.no_grad()
    def last_epoch(model: torch.nn.Module, epoch: int, seconds: float) -> None:
        if epoch == cfg.epochs:
            model.eval()  # the loop sets train mode again at each epoch's start
            kept["logits"] = torch.cat([model(train.to_float(x[i:i + 1000])) for i in range(0, len(x), 1000)])
            print(f"{out}: last epoch reads {100 * (kept['logits'].argmax(1) == y).float().mean():.2f} % of "
                  f"validation digits, {seconds:.0f} s of training", flush=True)

    train.train(cfg, on_epoch_end=last_epoch, progress=False)
    torch.save({"logits": kept["logits"], "labels": y, "name": " ".join([recipe, seed, *flags])}, out)


def read(paths: list[str]) -> None:
    runs = [torch.load(p) for p in paths]
    labels = runs[0]["labels"]
    probs = [r["logits"].softmax(1) for r in runs]
    wrong = [set(torch.nonzero(p.argmax(1) != labels).flatten().tolist()) for p in probs]
    for combo in itertools.chain.from_iterable(itertools.combinations(range(len(runs)), k)
                                               for k in range(1, len(runs) + 1)):
        errors = (sum(probs[i] for i in combo).argmax(1) != labels).sum().item()
        shared = len(set.intersection(*(wrong[i] for i in combo)))
        print(f"{' + '.join(runs[i]['name'] for i in combo):60s} {100 - 100 * errors / len(labels):.2f} % "
              f"({errors} errors, {shared} shared by every member)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"] and len(sys.argv) >= 5:
        train_candidate(*sys.argv[2:])
    elif sys.argv[1:2] == ["read"] and len(sys.argv) >= 3:
        read(sys.argv[2:])
    else:
        sys.exit(__doc__)
