"""Training configuration: every hyperparameter's default in `Config`, named recipes in `RECIPES`,
and fine-tuning's own few in `FinetuneConfig`.

Plain values, no torch: the CLI builds its `train` flags from `Config` on a Raspberry Pi too,
where `digitpi predict` must start without the training stack installed.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from dataclasses import dataclass, field, fields

OPTIMIZERS = ("sgd", "adam", "adadelta")  # built in train.OPTIMIZERS
SCHEDULES = ("onecycle", "constant", "step")  # computed in train.lr_factor
DEVICES = ("auto", "cpu", "cuda")
AMPS = ("auto", "off", "bf16", "fp16")  # the autocast dtypes of train.pick_amp

# Named presets. Ours (standard, fast, sprint, tiny, micro, best) override `Config`'s defaults, which are ours
# too; they were chosen on a validation split carved from the training set, never on the test set. The references
# (course, pytorch_example) reproduce their sources' recipes (README: "How the numbers were obtained").
RECIPES: dict[str, dict] = {
    # The default, and `Config`'s defaults: trained to read pictures, not only MNIST arrays.
    # Augmentation makes it robust to the small shifts, tilts and zoom a photo brings. On the 54k/6k
    # split, 6-12 epochs all read 99.3-99.5 % of validation digits; on rows of validation digits
    # (digitpi.bench.realistic) 6 epochs read 95.7 %, 8, 10 and 12 epochs 96.5 %: 8 is the shortest at the top.
    # mid_cnn, not fast_cnn: chosen on real handwriting (../shared/wild-dev) and thin-pen validation
    # digits, where the second conv per stage reads them even when stroke normalization is off
    # (README: "Choosing the default"). Thicker, stretched, sheared or warped training digits
    # (thickness, aspect, shear, elastic) each read real pictures worse, so they stay off. Half the 1s
    # flagged and the 7s crossed (continental) read continental digits drawn from validation 1s and 7s
    # 97.6 % right where 76.5 % were without, at the same validation accuracy (seeds 0-2 in the README).
    # A quarter made blocky (coarse): wild-dev's single digits 496.0 -> 502.0 of 519 over seeds 0-3, more on
    # every seed but one (equal), validation 99.50 -> 99.43 % (README: "Blocky scans"; 0.125: 500.25, 99.45 %).
    "standard": dict(model="mid_cnn", epochs=8, batch_size=128, optimizer="sgd", lr=0.1, schedule="onecycle",
                     label_smoothing=0.1, translate=2.0, rotate=10.0, scale=0.1, continental=0.5, coarse=0.25,
                     val_split=0.1),
    # ~99.1 % in a few seconds on a 2-core CPU: the same small CNN, two epochs, no augmentation.
    "fast": dict(model="fast_cnn", epochs=2, batch_size=128, optimizer="sgd", lr=0.1, schedule="onecycle",
                 label_smoothing=0.0, translate=0.0, rotate=0.0, scale=0.0, continental=0.0, coarse=0.0, val_split=0.1),
    # 99 % as soon as possible: one epoch. First `fast` at twice the peak learning rate, chosen with fast_cnn on the
    # 54k/6k split over seeds 0-2: one epoch at lr 0.1 read 98.85 % of validation digits (worst 98.80), at 0.2
    # 99.04 % (worst 98.98; two epochs at 0.1: 99.10 %); lr 0.3, batch 256 or a shorter warm-up did worse.
    # Then sprint_cnn, fast_cnn with a stride-2 stem: over seeds 0-4, 99.02 % (worst 98.85) of validation digits
    # against 99.03 % (98.88), its training steps 1.21x and its whole epoch 1.17x as fast (benchmarks/sprint-stem.txt).
    # Then, for a margin over 20 seeds (54k/6k): label smoothing 0.1 lifted 98.97 % (worst 98.72) to 99.09 % (98.90),
    # and Adam at lr 0.01 with betas 0.7 / 0.9 on top to 99.19 % (99.05); Adam's default betas read 99.11 % (10 seeds).
    # One epoch keeps no best epoch, so the final fit uses all 60k: 10 % fewer images read 0.09 points fewer.
    "sprint": dict(model="sprint_cnn", epochs=1, batch_size=128, optimizer="adam", lr=0.01, beta1=0.7, beta2=0.9,
                   schedule="onecycle", label_smoothing=0.1, translate=0.0, rotate=0.0, scale=0.0, continental=0.0,
                   coarse=0.0, val_split=0.0),
    # The two accuracy recipes were chosen on the 54k/6k split (val_split=0.1); their final fit uses all
    # 60k training images and keeps the last epoch (val_split=0), as one-cycle ends at its best weights.
    # >= 99.4 % with under 10k parameters: depth, a global-average-pool head, augmentation, 20 epochs.
    # Continental 1s and 7s: 99.38 % of validation digits (99.40 without); seeds 0-2 read 491-496 of wild-dev's
    # 519 real pictures, 483-488 without (benchmarks/continental-tiny.txt).
    "tiny": dict(model="tiny_cnn", epochs=20, batch_size=128, optimizer="sgd", lr=0.1, schedule="onecycle",
                 label_smoothing=0.1, translate=2.0, rotate=10.0, scale=0.1, continental=0.5, coarse=0.0,
                 val_split=0.0),
    # Under 5,000 parameters: tiny_cnn narrowed, short of capacity (it misreads 0.4-0.7 % of its own training
    # images). Weight decay 1e-4 and no label smoothing read 99.30 % of validation digits, tiny's recipe 99.20 %;
    # 40 epochs, milder augmentation or distillation from a best_cnn did no better (README: "Results").
    # Continental 1s and 7s: 99.30 % of validation digits (99.28 without), one writer's flagged 1s read (README).
    "micro": dict(model="micro_cnn", epochs=20, batch_size=128, optimizer="sgd", lr=0.1, schedule="onecycle",
                  weight_decay=1e-4, label_smoothing=0.0, translate=2.0, rotate=10.0, scale=0.1, continental=0.5,
                  coarse=0.0, val_split=0.0),
    # The most accurate single model (150k parameters): wider, two convs per stage, same recipe. Continental
    # 1s and 7s read validation digits as well (99.63 against 99.62 %) and real pictures hardly better
    # (three-member ensembles: 491 against 489 of 519), so they stay off (README: "Results").
    "best": dict(model="best_cnn", epochs=20, batch_size=128, optimizer="sgd", lr=0.1, schedule="onecycle",
                 label_smoothing=0.1, translate=2.0, rotate=10.0, scale=0.1, continental=0.0, coarse=0.0,
                 val_split=0.0),
    # The references reproduce their sources and must not move when `Config`'s defaults do: each row states
    # every hyperparameter (tests/test_train.py checks them against HYPERPARAMETERS), unused ones included.
    # The course notebook: Keras `model.fit(epochs=30, batch_size=512, validation_split=0.2)` with Adam at
    # its default 1e-3 and categorical cross-entropy; no augmentation, no smoothing, no weight decay.
    "course": dict(
        model="course_cnn", model_args={}, epochs=30, batch_size=512, val_split=0.2,
        optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", label_smoothing=0.0,
        translate=0.0, rotate=0.0, scale=0.0, thickness=0.0, aspect=0.0, shear=0.0, elastic=0.0, continental=0.0,
        coarse=0.0, beta1=0.9, beta2=0.999,  # Keras Adam's beta_1 and beta_2
        momentum=0.0, warmup=0.0, gamma=1.0),  # unused by adam and a constant schedule
    # pytorch/examples mnist: Adadelta lr 1.0, StepLR(step_size=1, gamma=0.7), batch 64, 14 epochs, plain
    # cross-entropy (nll_loss of log_softmax), no augmentation, no weight decay, no validation split.
    "pytorch_example": dict(
        model="pytorch_example", model_args={}, epochs=14, batch_size=64, val_split=0.0,
        optimizer="adadelta", lr=1.0, weight_decay=0.0, schedule="step", gamma=0.7, label_smoothing=0.0,
        translate=0.0, rotate=0.0, scale=0.0, thickness=0.0, aspect=0.0, shear=0.0, elastic=0.0, continental=0.0,
        coarse=0.0, momentum=0.0, beta1=0.9, beta2=0.999, warmup=0.0),  # unused by adadelta and a step schedule
}
REFERENCES = ("pytorch_example", "course")  # recipes that reproduce a source: stated in full
# The recipe of a model trained without --recipe: these, else the first recipe naming it, else standard
RECIPE_FOR_MODEL = {"mlp": "course", "baseline_cnn": "course", "fast_cnn": "standard", "best5_cnn": "best"}


# The Python types each annotation of a config allows (an int is a float too: 1 for 1.0 in a hand-edited JSON)
FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
               "str | None": (str, type(None)), "int | None": (int, type(None))}


SEEDS = (-2**63, 2**63)  # what torch's generators take, as a signed 64-bit number


def check_types(config) -> None:
    """Each field of a config dataclass holds its annotation's type: a hand-edited config.json may hold
    anything, and a string seed or a NaN rate would fail deep in torch instead of here. A NumPy number
    (a sweep over `np.arange`, a value read from an array) becomes the Python number it holds: it is
    the same value, and the config must save as JSON beside the checkpoint."""
    for f in fields(config):
        value, allowed = getattr(config, f.name), FIELD_TYPES[f.type]
        if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)) and int in allowed:
            value = int(value)
            object.__setattr__(config, f.name, value)  # frozen: the one place a field is set after __init__
        elif isinstance(value, numbers.Real) and not isinstance(value, (numbers.Integral, float)) and float in allowed:
            value = float(value)
            object.__setattr__(config, f.name, value)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{f.name} must be {f.type.replace(' | None', ' or null')}, got {value!r}")


@dataclass(frozen=True)
class Config:
    model: str = "mid_cnn"  # a name in models.MODELS
    model_args: dict = field(default_factory=dict)  # keyword arguments of the model's builder, as JSON
    dataset: str = "mnist"  # a name in data.DATASETS
    data_dir: str | None = None  # None: DIGITPI_DATA_DIR, then the cache, then download
    epochs: int = 8  # passes over the training images
    batch_size: int = 128  # images per step
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adam | adadelta
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD only
    beta1: float = 0.9  # Adam only: decay of its running mean of gradients
    beta2: float = 0.999  # Adam only: decay of its running mean of squared gradients
    weight_decay: float = 5e-4  # L2 on conv/linear weights, not on BN or biases
    schedule: str = "onecycle"  # onecycle (linear warm-up then down to 0) | constant | step
    warmup: float = 0.2  # onecycle: fraction of steps spent warming up
    gamma: float = 0.7  # step: lr multiplier after each epoch
    label_smoothing: float = 0.1  # cross-entropy target smoothing
    translate: float = 2.0  # augmentation: max shift in pixels
    rotate: float = 10.0  # augmentation: max rotation in degrees
    scale: float = 0.1  # augmentation: max relative zoom (0.1 = +-10 %)
    thickness: float = 0.0  # augmentation: max stroke thickening, as a fraction of one 3x3 dilation
    aspect: float = 0.0  # augmentation: max relative stretch of width against height
    shear: float = 0.0  # augmentation: max shear, degrees
    elastic: float = 0.0  # augmentation: max displacement of a smooth random warp, pixels
    continental: float = 0.5  # augmentation: share of 1s given a long flag and of 7s a crossbar
    coarse: float = 0.25  # augmentation: share of digits made as blocky as a 16x16 binarized scan shows
    val_split: float = 0.1  # fraction of training images held out for validation (0: none)
    seed: int = 0  # data order, augmentation, initialisation and (unless val_seed) the validation split
    val_seed: int | None = None  # the validation split's own seed: runs that share one are measured together
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    channels_last: bool = True  # faster convolutions on CPU
    amp: str = "auto"  # mixed-precision training steps: auto (on a CUDA GPU, not the CPU) | off | bf16 | fp16

    def __post_init__(self) -> None:
        check_types(self)
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.val_split < 1, f"--val-split must be in [0, 1), got {self.val_split}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
             f"--beta1 and --beta2 must be in [0, 1), got {self.beta1} and {self.beta2}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}"),
            (self.gamma > 0, f"--gamma must be positive, got {self.gamma}"),
            (0 <= self.warmup <= 1, f"--warmup must be in [0, 1], got {self.warmup}"),
            *[(getattr(self, name) >= 0, f"--{name} must be 0 or more, got {getattr(self, name)}")
              for name in AUGMENTATION],
            *[(seed is None or SEEDS[0] <= seed < SEEDS[1], f"--{flag} must be in [-2**63, 2**63), got {seed}")
              for flag, seed in (("seed", self.seed), ("val-seed", self.val_seed))],
            (self.device in DEVICES or re.fullmatch(r"cuda:\d+", self.device) is not None,
             f"--device must be one of {', '.join(DEVICES)} or cuda:N (one GPU of several), got {self.device}"),
            (self.amp in AMPS, f"--amp must be one of {', '.join(AMPS)}, got {self.amp}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# What a run is trained *on* and *where*, not *how*: a recipe never sets these, the user may.
RUN_SETTINGS = ("dataset", "data_dir", "seed", "val_seed", "device", "channels_last", "amp")
HYPERPARAMETERS = tuple(f.name for f in fields(Config) if f.name not in RUN_SETTINGS)  # what a recipe decides
# The knobs of `train.augment`: 0 turns one off
AUGMENTATION = ("translate", "rotate", "scale", "thickness", "aspect", "shear", "elastic", "continental", "coarse")


def recipe_config(recipe: str | None = None, **overrides) -> Config:
    """Config from a named recipe plus explicit overrides (None values are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if recipe is None:
        model = overrides.get("model", Config.model)
        recipe = RECIPE_FOR_MODEL.get(model) or next(
            (name for name, r in RECIPES.items() if r["model"] == model), "standard")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return Config(**{**copy.deepcopy(RECIPES[recipe]), **overrides})  # no Config shares a row's model_args


@dataclass(frozen=True)
class FinetuneConfig:
    """`digitpi finetune`: a trained run taught a user's handwriting. Its recipe (optimizer, schedule,
    augmentation, label smoothing) is the run's own; these say how much and on what. Chosen on a
    synthetic writer made of MNIST training digits (tests/test_finetune.py) and the run's validation
    digits, never on wild-dev or the test set."""

    epochs: int = 3  # passes over the mix of samples and MNIST images
    lr_scale: float = 0.1  # peak learning rate as a fraction of the run's: nudge the weights, not retrain
    replay: int = 6000  # MNIST training images mixed in, so what the model knew of MNIST is not lost
    share: float = 0.25  # fraction of each epoch that is the user's samples, repeated (augmentation varies them)
    holdout: float = 0.25  # fraction of each digit's samples kept out of training to measure before/after
    seed: int = 0  # the held-out samples, the MNIST images drawn, data order and augmentation

    def __post_init__(self) -> None:
        check_types(self)
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.lr_scale > 0, f"--lr-scale must be positive, got {self.lr_scale}"),
            (self.replay >= 0, f"--replay must be 0 or more, got {self.replay}"),
            (0 < self.share <= 1, f"--share must be in (0, 1], got {self.share}"),
            (0 <= self.holdout < 1, f"--holdout must be in [0, 1), got {self.holdout}"),
            (0 <= self.seed < SEEDS[1], f"--seed must be in [0, 2**63), got {self.seed}"),  # NumPy's: not negative
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
