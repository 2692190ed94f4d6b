"""Train a model from the zoo: data as tensors in memory, batch-level augmentation, one loop.

Hyperparameters live in `config` (`Config` defaults and the `RECIPES` table over them).
`train()` returns a `TrainResult` and nothing else happens here: `pipeline.finish_run` measures it
on the test set and saves it as a run folder (`rundir`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from digitpi import UserError, contract, data, distributed
from digitpi.config import AUGMENTATION, Config
from digitpi.models import create_model
from digitpi.progress import Progress

# ---------------------------------------------------------------- pieces of the loop


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU; `cuda` (or `cuda:N`) where there is none is the user's
    mistake."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # cuda:99999999999999999999
        raise UserError(f"--device {name}: not a device torch knows") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else "torch sees no GPU"
        raise UserError(f"--device {name}: no CUDA device here ({why}); use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), cuda:0 to "
                        f"cuda:{torch.cuda.device_count() - 1}")
    return device


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_amp(name: str, device: torch.device) -> str:
    """The precision of the training steps: `off` (float32), `bf16` (autocast) or `fp16` (autocast, scaled gradients).
    `auto`: bf16 on a CUDA GPU that has it, else fp16 there; float32 on the CPU, where autocast made the
    steps of our models 11-18x slower on this project's AMD EPYC (no AMX, no AVX-512; benchmarks/amp-cpu.txt)."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def train_step(net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp: str,
               x: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch, in the precision `pick_amp` chose; the batch's loss and logits.
    `scaler` is enabled for fp16 only: otherwise it passes the loss through and calls `opt.step()`."""
    with torch.autocast(x.device.type, AMP_DTYPES.get(amp), enabled=amp != "off"):
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)  # autocast: in float32
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss, logits


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]: `contract.to_model_input` on torch tensors."""
    return images.unsqueeze(1).float().mul_(contract.PIXEL_SCALE)


def segment_ink(start: torch.Tensor, end: torch.Tensor, half_width: torch.Tensor, side: int) -> torch.Tensor:
    """(N, side, side) images of one anti-aliased straight stroke each, from `start` to `end` ((N, 2) as
    row, column in pixels), `half_width` (N,) px either side of its centre line, a 1-px ramp at its edge."""
    pixel = torch.arange(side, dtype=start.dtype, device=start.device)
    p = torch.stack(torch.meshgrid(pixel, pixel, indexing="ij"), -1)  # (side, side, 2)
    a, ab = start[:, None, None], (end - start)[:, None, None]  # (N, 1, 1, 2)
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)
    distance = (p - a - t[..., None] * ab).norm(dim=-1)
    return (half_width[:, None, None] + 0.5 - distance).clamp(0, 1)


def continental(x: torch.Tensor, y: torch.Tensor, share: float, draw: Callable[..., torch.Tensor]) -> torch.Tensor:
    """`share` of the 1s given the long flag and of the 7s the crossbar that continental writers draw
    and MNIST has few of: without them a flagged 1 is read as 7 (README, "Continental 1s and 7s"). The
    flag runs from the top of the 1 down to the left, 30-85 % of the digit's height long (Semeion's
    Italian writers and others draw it as long as the stem; up to 55 %, 1s were read 7 more often and
    7s no less), 20-70 degrees below the horizontal (up to 55, Semeion's 1s started low and steep, like
    an upturned V, were misread more often); the bar crosses the 7 at 45-65 % of its height,
    30-50 % of it long. Both are drawn 1.6-2.6 px wide, as MNIST's strokes are, before the batch is
    shifted, turned and zoomed."""
    n, side = x.shape[0], x.shape[-1]
    # uniform in [0, 1): drawn or not; the flag's length; its angle (a 1) or the bar's tilt (a 7: no flag);
    # the bar's place and length; the pen's width. Drawn for the whole batch, so the stream of random
    # numbers does not depend on the labels; only the images that get a stroke are worked on.
    u = (draw(n, 6) + 1) / 2
    chosen = (((y == 1) | (y == 7)) & (u[:, 0] < share)).nonzero()[:, 0]
    images, u, is_one = x[chosen, 0], u[chosen], y[chosen] == 1
    rows = (images > 0.5).any(2)
    pixel = torch.arange(side, device=x.device, dtype=x.dtype)
    top = rows.float().argmax(1).to(x.dtype)
    bottom = side - 1 - rows.flip(1).float().argmax(1).to(x.dtype)
    height = bottom - top + 1

    def centre_column(row: torch.Tensor) -> torch.Tensor:  # ink-weighted column of each image's `row`
        line = images.gather(1, row.long().clamp(0, side - 1)[:, None, None].expand(-1, 1, side))[:, 0]
        return (line * pixel).sum(1) / line.sum(1).clamp_min(1e-6)

    half_width = 0.8 + 0.5 * u[:, 5]
    flag_length, flag_angle = height * (0.3 + 0.55 * u[:, 1]), torch.deg2rad(20 + 50 * u[:, 2])
    flag_start = torch.stack([top, centre_column(top)], 1)
    flag_end = flag_start + torch.stack([torch.sin(flag_angle), -torch.cos(flag_angle)], 1) * flag_length[:, None]
    bar_row = top + height * (0.45 + 0.2 * u[:, 3])
    bar_length, bar_tilt = height * (0.3 + 0.2 * u[:, 4]), (u[:, 2] - 0.5) * 2  # tilt: +-1 px end to end
    bar_centre = torch.stack([bar_row, centre_column(bar_row)], 1)
    bar_half = torch.stack([-bar_tilt / 2, bar_length / 2], 1)
    start = torch.where(is_one[:, None], flag_start, bar_centre - bar_half)
    end = torch.where(is_one[:, None], flag_end, bar_centre + bar_half)
    stroke = segment_ink(start, end, half_width, side) * rows.any(1).to(x.dtype)[:, None, None]  # blank: none
    out = x.clone()
    out[chosen, 0] = torch.maximum(images, stroke)
    return out


def as_tiny_scan(x: torch.Tensor, share: float, draw: Callable[..., torch.Tensor]) -> torch.Tensor:
    """`share` of the batch as a tiny binarized scan looks once framed: the 20-px box shrunk to 16 px,
    each pixel made black or white at half its level, then enlarged again. Semeion's 16x16 scans, and
    the small canvases of some writers, reach the model blocky; MNIST's digits are smooth (README,
    "Blocky scans"). The whole batch is worked on and chosen from: no images picked out, no sync."""
    side = x.shape[-1]
    chosen = ((draw(x.shape[0]) + 1) / 2 < share)[:, None, None, None]
    small = F.interpolate(x, size=round(side * 16 / contract.BOX_SIZE), mode="area")
    blocky = F.interpolate((small > 0.5).to(x.dtype), size=side, mode="bilinear", align_corners=False)
    return torch.where(chosen, blocky, x)


def augment(x: torch.Tensor, y: torch.Tensor, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """A whole batch changed as handwriting and cameras change digits, with no per-image Python: 1s
    flagged and 7s crossed (`continental`), the stroke thickened or thinned, then shifted, rotated,
    zoomed, stretched, sheared and (`elastic`) warped by one sampling grid, and some made blocky
    (`coarse`). Every amount is uniform in +-the config's maximum."""
    n = x.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=gen, device=gen.device) * 2 - 1).to(x.device)

    if cfg.continental:
        x = continental(x, y, cfg.continental, uniform)
    if cfg.thickness:  # towards a 3x3 dilation (thicker) or, by half as much at most, a 3x3 erosion
        amount = uniform(n, 1, 1, 1) * cfg.thickness
        thicker, thinner = F.max_pool2d(x, 3, 1, 1), -F.max_pool2d(-x, 3, 1, 1)
        x = torch.where(amount > 0, x + amount * (thicker - x), x + amount / 2 * (x - thinner))
    angle = uniform(n) * math.radians(cfg.rotate)
    zoom = 1 + uniform(n) * cfg.scale
    ones = torch.ones(n, device=x.device)  # an amount of 0 draws no random numbers: same stream as without it
    aspect = torch.exp(uniform(n) * math.log1p(cfg.aspect)) if cfg.aspect else ones  # width against height
    shear = torch.tan(uniform(n) * math.radians(cfg.shear)) if cfg.shear else 0 * ones
    shift = uniform(n, 2) * (2 * cfg.translate / contract.IMAGE_SIZE)  # grid units: 2 = whole image
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # input position = rotation / zoom @ [[1 / aspect, shear * aspect], [0, aspect]] @ output position + shift
    theta = torch.stack([torch.stack([cos / aspect, (cos * shear - sin) * aspect, shift[:, 0]], 1),
                         torch.stack([sin / aspect, (sin * shear + cos) * aspect, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if cfg.elastic:  # a smooth random displacement: coarse noise, bicubic-upsampled, in grid units
        field = uniform(n, 2, 4, 4) * (2 * cfg.elastic / contract.IMAGE_SIZE)
        grid = grid + F.interpolate(field, size=x.shape[-2:], mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, align_corners=False)
    return as_tiny_scan(x, cfg.coarse, uniform) if cfg.coarse else x


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Weight decay only on weights of convs and linears: decaying BN scales or biases only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return OPTIMIZERS[cfg.optimizer](groups, cfg)


OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                               nesterov=cfg.momentum > 0),  # Nesterov needs a momentum
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)),
    "adadelta": lambda groups, cfg: torch.optim.Adadelta(groups, lr=cfg.lr),
}


def lr_factor(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate at `step` (counted from 0)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        warm = max(1, int(cfg.warmup * total))
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / (total - warm))
    if cfg.schedule == "step":
        return cfg.gamma ** (step // steps_per_epoch)
    return 1.0


def split_train_val(n: int, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded, stratification-free random split: same seed (`val_seed`, else `seed`), same split."""
    seed = cfg.seed if cfg.val_seed is None else cfg.val_seed
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * cfg.val_split))
    return order[n_val:], order[:n_val]


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 1000) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy and predicted labels of `model` on uint8 images."""
    model.eval()
    device = next(model.parameters()).device
    total_loss, preds = 0.0, []
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size].to(device))
        y = labels[i:i + batch_size].to(device)
        logits = model(x.contiguous(memory_format=torch.channels_last))
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
    pred = torch.cat(preds)
    return total_loss / len(images), (pred == labels.cpu()).float().mean().item(), pred


def validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             rank: distributed.Rank | None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the validation images, each rank measuring its share."""
    distributed.sync_buffers(model, rank)
    if rank is None:
        return evaluate(model, images, labels)[:2]
    own = distributed.shard(torch.arange(len(images)), rank)
    loss, accuracy, _ = evaluate(model, images[own], labels[own]) if len(own) else (0.0, 0.0, None)
    loss_sum, correct, count = distributed.all_sum([loss * len(own), round(accuracy * len(own)), len(own)], rank)
    return loss_sum / count, correct / count


# ---------------------------------------------------------------- the loop


# history.json: one value per epoch under each key. `loss` and `accuracy` are Keras's: what the optimiser saw.
# `train_*` measure the training images the way `val_*` measure the validation images, so the two compare.
HISTORY = {
    "loss": "running mean over the epoch's batches of the loss minimised: augmented images, label smoothing, "
            "dropout and BatchNorm in training mode, weights changing as it goes",
    "accuracy": "running accuracy over the same batches",
    "train_loss": "plain cross-entropy of the epoch's final weights, in eval mode, on up to "
                  "TRAIN_MEASURE_IMAGES training images as they are (not augmented): comparable to val_loss",
    "train_accuracy": "accuracy on those same training images",
    "val_loss": "plain cross-entropy of the epoch's final weights, in eval mode, on the validation images",
    "val_accuracy": "accuracy on the validation images",
}
TRAIN_MEASURE_IMAGES = 10_000  # a fixed random sample of the training images: +-0.1 point at 99 %, ~0.3 s a time


def while_learning(cfg: Config) -> str:
    """What sets `loss` apart from `train_loss` under `cfg`, for the legend of a plot."""
    reasons = ["running mean"]
    if any(getattr(cfg, name) for name in AUGMENTATION):
        reasons.append("augmented")
    if cfg.label_smoothing:
        reasons.append(f"label smoothing {cfg.label_smoothing:g}")
    return ", ".join(reasons)


@dataclass
class TrainResult:
    config: Config
    model: nn.Module  # holds the kept weights (best on validation, else the last)
    history: dict[str, list[float]]  # per epoch, under each key of HISTORY (val_* empty without a validation split)
    best_epoch: int  # 1-based epoch whose weights were kept
    train_seconds: float  # the training loop, per-epoch validation included, the train_* measurement not
    data_checksums: dict[str, str]
    rank: int = 0  # under torchrun, this process's rank: only rank 0 measures and saves
    processes: int = 1  # under torchrun, how many trained together: one seed, other weights than one process
    device: str = "cpu"  # where it trained (cpu, cuda): the same seed gives other weights on a GPU
    amp: str = "off"  # the precision of its training steps (pick_amp): off is float32


EpochHook = Callable[[nn.Module, int, float], bool | None]  # (model, epoch, training seconds) -> stop?


def train(cfg: Config, on_epoch_end: EpochHook | None = None, progress: bool = True,
          train_images: torch.Tensor | None = None, train_labels: torch.Tensor | None = None,
          initial_state: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train `cfg.model` with `cfg`; the loop's only Python work per step is slicing a batch.

    `train_images`/`train_labels` (uint8 (N, 28, 28), int64 (N,)) replace the dataset's training
    split; `initial_state` (a state dict of `cfg.model`) replaces the random initialisation: with
    both, `finetune` teaches a trained model new images through this same loop."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    rank = distributed.start(device)  # DDP: None unless torchrun started this process
    device = rank.device if rank else device
    amp = pick_amp(cfg.amp, device)
    progress = progress and (rank is None or rank.main)  # DDP: rank 0 speaks for all
    if train_images is None:
        images, labels = data.load_split(cfg.dataset, "train", cfg.data_dir)
        train_images, train_labels = torch.from_numpy(images.copy()), torch.from_numpy(labels)
    train_idx, val_idx = split_train_val(len(train_images), cfg)
    x_train, y_train = train_images[train_idx].to(device), train_labels[train_idx].to(device)
    x_val, y_val = train_images[val_idx], train_labels[val_idx]
    measured = train_idx[:TRAIN_MEASURE_IMAGES]  # train_idx is in random order: a random sample
    x_measure, y_measure = train_images[measured], train_labels[measured]

    model = create_model(cfg.model, **cfg.model_args)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # fp16 gradients underflow unscaled
    net = distributed.wrap(model, rank)  # DDP: steps call `net`; validation and the result use `model`
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    aug_gen = distributed.own_generator(gen, cfg.seed, rank)  # DDP: one order for all, augmentation per rank
    augmenting = any(getattr(cfg, name) for name in AUGMENTATION)

    n = len(x_train)
    steps_per_epoch = distributed.steps_per_epoch(n, cfg.batch_size, rank)
    if not steps_per_epoch:
        processes = f" for {rank.world} processes" if rank else ""
        raise UserError(f"--val-split {cfg.val_split} leaves {n} of {len(train_images)} images to train on{processes}")
    history: dict[str, list[float]] = {key: [] for key in HISTORY}
    best_acc, best_epoch, best_state = -1.0, 0, None
    step, seconds = 0, 0.0
    shown = Progress(cfg.epochs, steps_per_epoch, enabled=progress)
    for epoch in range(1, cfg.epochs + 1):
        shown.start_epoch(epoch)
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for i in range(steps_per_epoch):
            idx = distributed.shard(order[i * cfg.batch_size:(i + 1) * cfg.batch_size], rank)  # DDP: its share
            x, y = to_float(x_train[idx]), y_train[idx]
            if augmenting:
                x = augment(x, y, cfg, aug_gen)
            factor = lr_factor(cfg, step, steps_per_epoch)
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * factor
            loss, logits = train_step(net, opt, scaler, amp, x.contiguous(memory_format=memory_format), y,
                                      cfg.label_smoothing)
            step += 1
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            shown.step(lambda s=loss_sum, c=correct, k=seen: {"loss": s.item() / k, "accuracy": c.item() / k})
        loss_total, correct_total, seen_total = distributed.all_sum([loss_sum.item(), correct.item(), seen], rank)
        history["loss"].append(loss_total / seen_total)
        history["accuracy"].append(correct_total / seen_total)
        if len(x_val):
            val_loss, val_acc = validate(model, x_val, y_val, rank)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seconds += time.perf_counter() - start
        train_loss, train_acc = validate(model, x_measure, y_measure, rank)  # outside the clock: reporting only
        history["train_loss"].append(train_loss)
        history["train_accuracy"].append(train_acc)
        shown.end_epoch({key: values[-1] for key, values in history.items() if values})
        if on_epoch_end is not None and on_epoch_end(model, epoch, seconds):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch  # no validation: the last epoch run, also where on_epoch_end stopped early
    model.eval()
    distributed.stop(rank)
    return TrainResult(cfg, model, history, best_epoch, seconds, data.checksums(cfg.dataset),
                       rank.rank if rank else 0, rank.world if rank else 1, device.type, amp)
