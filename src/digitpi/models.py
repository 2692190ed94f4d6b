"""The model zoo: a dict of named builder functions and `create_model(name)`.

Every model takes float32 images of shape (N, 1, 28, 28) scaled to [0, 1] (white ink on
black, as MNIST: `digitpi.contract`) and returns logits (N, 10). Builders only build: no device,
dtype or printing.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from digitpi import UserError
from digitpi.contract import IMAGE_SIZE, NUM_CLASSES


def mlp(hidden: int = 512, dropout: float = 0.2) -> nn.Module:
    """The course's dense network: 784-512-512-10 with dropout."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(IMAGE_SIZE * IMAGE_SIZE, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, NUM_CLASSES),
    )


def baseline_cnn(filters: int = 32, hidden: int = 100) -> nn.Module:
    """The course's baseline: one valid 3x3 conv, a 2x2 max-pool, two dense layers."""
    side = (IMAGE_SIZE - 2) // 2  # valid 3x3 conv, then pool: 28 -> 26 -> 13
    return nn.Sequential(
        nn.Conv2d(1, filters, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(filters * side * side, hidden), nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    )


def course_cnn(filters: tuple[int, ...] = (16, 32, 64, 128),
               dense: tuple[int, ...] = (784, 392, 128)) -> nn.Module:
    """The course's CNN: four 2x2 'same' convs, each max-pooled (28 -> 14 -> 7 -> 3 -> 1).

    Keras pads an even kernel on the right and bottom only, hence ZeroPad2d((0, 1, 0, 1)).
    """
    layers: list[nn.Module] = []
    c_in, side = 1, IMAGE_SIZE
    for c_out in filters:
        layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c_in, c_out, 2), nn.ReLU(), nn.MaxPool2d(2)]
        c_in, side = c_out, side // 2
    layers.append(nn.Flatten())
    width = c_in * side * side
    for units in dense:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def pytorch_example(filters: tuple[int, int] = (32, 64), hidden: int = 128) -> nn.Module:
    """The network of pytorch/examples mnist, kept as a speed and accuracy reference."""
    side = (IMAGE_SIZE - 4) // 2  # two valid 3x3 convs, then pool: 28 -> 24 -> 12
    return nn.Sequential(
        nn.Conv2d(1, filters[0], 3), nn.ReLU(),
        nn.Conv2d(filters[0], filters[1], 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(filters[1] * side * side, hidden), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(hidden, NUM_CLASSES),
    )


def compact_cnn(stages: tuple[tuple[int, ...], ...], head: str = "flatten", stem: bool = False,
                kernel: int = 3) -> nn.Module:
    """Our CNNs: stages of conv-BN-ReLU (3x3 unless `kernel`) at one resolution, each ending in a 2x2 max-pool.

    A stage's last conv is pooled *before* its BatchNorm and ReLU: the same function class
    (max commutes with ReLU) with BN and ReLU on a quarter of the pixels, ~1.8x faster on CPU.
    `head`: "flatten" keeps where features are (more accurate for short training); "gap"
    (global average pooling) keeps the head tiny for the smallest models.
    `stem`: the first conv is 4x4 with stride 2 and does the first stage's halving in place of its
    max-pool: it computes a quarter of the pixels, at 28x28 where a 1-channel conv is slowest on CPU.
    `kernel`: the convs' size (odd, so that padding keeps each stage's resolution). 5x5 members share
    only part of 3x3 ones' mistakes, so an ensemble of both reads more (README: "Results").
    """
    if head not in ("flatten", "gap"):
        raise ValueError(f"head must be flatten or gap, got {head!r}")
    if not 1 <= len(stages) <= 4 or not all(widths and all(type(c) is int and c >= 1 for c in widths)
                                            for widths in stages):
        raise ValueError("stages must be 1 to 4 lists of positive conv widths (each stage halves the image)")
    if type(kernel) is not int or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd positive integer, got {kernel!r}")
    layers: list[nn.Module] = []
    c_in, side = 1, IMAGE_SIZE
    for stage, widths in enumerate(stages):
        halved_by_stem = stem and stage == 0  # its first conv halves the image, so the stage does not pool
        for i, c_out in enumerate(widths):
            strided = halved_by_stem and i == 0
            layers.append(nn.Conv2d(c_in, c_out, 4 if strided else kernel, stride=2 if strided else 1,
                                    padding=1 if strided else kernel // 2, bias=False))  # BN supplies the bias
            if i == len(widths) - 1 and not halved_by_stem:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        side //= 2  # by the stage's max-pool or the stem's stride
    if head == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, NUM_CLASSES)]
    else:
        layers += [nn.Flatten(), nn.Linear(c_in * side * side, NUM_CLASSES)]
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "baseline_cnn": baseline_cnn,
    "course_cnn": course_cnn,
    "pytorch_example": pytorch_example,
    # Ours: one builder, seven models. Each stage is a tuple of conv widths at one resolution (28, 14, 7;
    # sprint_cnn's first at 14).
    "fast_cnn": partial(compact_cnn, stages=((16,), (32,), (64,))),  # 99 % in two epochs
    "sprint_cnn": partial(compact_cnn, stages=((16,), (32,), (64,)), stem=True),  # fast_cnn, an epoch 1.17x sooner
    "mid_cnn": partial(compact_cnn, stages=((16, 16), (32, 32), (64,))),  # the default: reads real pens best per second
    "tiny_cnn": partial(compact_cnn, stages=((8, 8), (16, 16), (32,)), head="gap"),  # under 10k parameters
    "micro_cnn": partial(compact_cnn, stages=((6, 6), (12, 12), (21,)), head="gap"),  # under 5k parameters
    "best_cnn": partial(compact_cnn, stages=((32, 32), (64, 64), (128,))),  # the most accurate, still Pi-sized
    # One 5x5 conv a stage: as accurate as best_cnn, different mistakes, so the two make an ensemble
    "best5_cnn": partial(compact_cnn, stages=((32,), (64,), (128,)), kernel=5),
}


# 400 MB of float32 weights: far beyond any digit reader, well short of filling a training machine's memory.
MAX_PARAMS = 100_000_000


class UnknownModelError(UserError):
    pass


def create_model(name: str, **model_args) -> nn.Module:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**model_args)


def check_model(name: str, model_args: dict) -> int:
    """Build a model and run an image through it without any weights (meta device: shapes only), and
    return its parameter count, so an unknown name, arguments its builder does not take or a layout too
    large to hold or too deep for a 28x28 image fail before anything runs."""
    shown = json.dumps(model_args)
    shown = shown if len(shown) <= 100 else shown[:97] + "..."
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. zero-element layers: the error that follows says it better
            model = create_model(name, **model_args)
            params = count_params(model)
            if params > MAX_PARAMS:
                raise UserError(f"{name} with model args {shown} has {params:,} parameters, "
                                f"more than the {MAX_PARAMS:,} digitpi builds")
            model(torch.empty(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    except (TypeError, ValueError, RuntimeError) as e:  # what nn layers raise for arguments that do not fit
        raise UserError(f"cannot build {name} from model args {shown}: {e}") from None
    return params


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class SummaryRow:
    name: str  # Keras's rule: the type in snake_case, numbered from its second use (conv2d, conv2d_1, ...)
    kind: str  # the torch type, e.g. Conv2d
    shape: tuple[int, ...]  # output shape without the batch axis, channels first (torch's order)
    trainable: int  # parameters the optimiser changes
    non_trainable: int  # floating-point state it doesn't: BatchNorm's running mean and variance, as Keras counts them


def snake_case(kind: str) -> str:
    """Keras's layer-naming rule: MaxPool2d -> max_pool2d, ReLU -> re_lu."""
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", kind)).lower()


def summary(model: nn.Module) -> list[SummaryRow]:
    """One row per leaf layer, with shapes found by running one blank image through the model."""
    rows: list[SummaryRow] = []
    uses: dict[str, int] = {}

    def record(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        kind = type(module).__name__
        name = snake_case(kind)
        uses[name] = uses.get(name, 0) + 1
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        state = sum(b.numel() for b in module.buffers() if b.is_floating_point())  # not BN's batch counter
        rows.append(SummaryRow(name if uses[name] == 1 else f"{name}_{uses[name] - 1}", kind,
                               tuple(output.shape[1:]), trainable, frozen + state))

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return rows


def format_summary(model: nn.Module, name: str) -> str:
    """Keras's `model.summary()` table: layers, output shapes, parameters; then total, trainable, non-trainable."""
    rows = summary(model)
    table = [("Layer (type)", "Output Shape", "Param #")]
    table += [(f"{r.name} ({r.kind})", str((None, *r.shape)), f"{r.trainable + r.non_trainable:,}") for r in rows]
    widths = [max(len(row[i]) for row in table) + 3 for i in range(3)]
    width = sum(widths)
    lines = [f'Model: "{name}"', "_" * width]
    for i, row in enumerate(table):
        lines.append(" " + "".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines.append("=" * width if i == 0 else "")
    lines[-1] = "=" * width
    trainable = sum(r.trainable for r in rows)
    non_trainable = sum(r.non_trainable for r in rows)
    lines += [f"Total params: {trainable + non_trainable:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {non_trainable:,}", "_" * width]
    return "\n".join(lines)
