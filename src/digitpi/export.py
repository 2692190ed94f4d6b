"""Export a trained model for the Raspberry Pi: ONNX fp32, ONNX int8, NumPy weights and a model card.

`export_model(model, name, model_args, out_dir)` is the one entry point every producer uses (our
training runs through `export_run`, an imported Keras model directly); `export_ensemble` takes
several models, each prepared as `export_model` prepares one, into one folder. Both take three steps:
write (fold BatchNorm into the convolutions, then one file per row of `exportdir.VARIANTS`, each
by its function in WRITERS: ONNX, int8 calibrated on *training* images, NumPy weights), measure
(every variant against the torch model on the real test set, by its backend in MEASURERS) and
describe (the card `model.json`, moved in last from the hidden folder the export is made in).
The Pi reads the folder with `digitpi.runtime`, which needs no torch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from digitpi import UserError, __version__, contract, data, exportdir, files, one_line, rundir, runtime
from digitpi.card import model_layers, seal
from digitpi.config import Config
from digitpi.evaluate import Ensemble, shared_dataset
from digitpi.exportdir import CARD, CARD_FORMAT, SEVEN_BIT, VARIANTS
from digitpi.models import count_params

OPSET = 18  # the torch.export-based exporter's own opset: no version conversion step
INPUT_NAME, OUTPUT_NAME = "image", "logits"
SUPPORTED = ("Conv2d", "BatchNorm2d", "BatchNorm1d", "ReLU", "MaxPool2d", "ZeroPad2d",
             "AdaptiveAvgPool2d(1)", "Flatten", "Linear", "Dropout")


@dataclass(frozen=True)
class ExportConfig:
    calibration_images: int = 1000  # training images that set the int8 activation ranges
    calibration_seed: int = 0  # which training images: same seed, same int8 file
    quant_format: str = "QDQ"  # QDQ (ORT fuses it into int8 kernels) | QOperator
    per_channel: bool = True  # one weight scale per output channel: folded BN spreads channel ranges
    reduce_range: bool = True  # 7-bit weights: x86 without VNNI saturates 8-bit products (quantize_int8)
    dataset: str = "mnist"  # a name in data.DATASETS: calibration and test images
    data_dir: str | None = None  # None: DIGITPI_DATA_DIR, then the cache


class ExportError(UserError):
    """A model digitpi cannot export (unsupported layer) or an unusable run folder."""


# ---------------------------------------------------------------- a deployable copy of the model


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm at inference is y = x * scale + shift per channel."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def fold_into(layer: nn.Conv2d | nn.Linear, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """A copy of `layer` whose output is the old output * scale + shift (per output channel)."""
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        folded.weight.mul_(scale.reshape(-1, *[1] * (folded.weight.ndim - 1)))
        bias = layer.bias.detach() * scale + shift if layer.bias is not None else shift.clone()
        folded.bias = nn.Parameter(bias)
    return folded


def check_layer(index: int, layer: nn.Module) -> None:
    """Refuse, by name, any layer the NumPy backend could not rebuild exactly."""

    def refuse(why: str) -> None:
        raise ExportError(f"cannot export layer {index} ({layer!r}): {why}")

    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros":
            refuse("only groups=1, dilation=1, zero padding are supported")
    elif isinstance(layer, nn.MaxPool2d):
        if layer.dilation not in (1, (1, 1)) or layer.ceil_mode or layer.return_indices:
            refuse("only dilation=1, ceil_mode=False are supported")
    elif isinstance(layer, nn.AdaptiveAvgPool2d):
        if layer.output_size not in (1, (1, 1)):
            refuse("only global average pooling (output size 1) is supported")
    elif isinstance(layer, nn.Flatten):
        if (layer.start_dim, layer.end_dim) != (1, -1):
            refuse("only Flatten(start_dim=1) is supported")
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        if not layer.track_running_stats or layer.running_mean is None:
            refuse("BatchNorm without running statistics cannot be exported")
    elif not isinstance(layer, nn.ReLU | nn.ZeroPad2d | nn.Linear | nn.Dropout | nn.BatchNorm1d):
        refuse(f"supported layers are {', '.join(SUPPORTED)} in an nn.Sequential")


def deployable(model: nn.Module) -> nn.Sequential:
    """An inference-only copy: Dropout dropped, each BatchNorm folded into the conv/linear before it.

    A BatchNorm behind a MaxPool (conv -> pool -> BN, as our zoo has it) folds too when every
    channel's scale is positive, since max-pooling commutes with an increasing per-channel map.
    Any other BatchNorm stays as a per-channel affine layer.
    """
    if not isinstance(model, nn.Sequential):
        raise ExportError(f"can export only an nn.Sequential, got {type(model).__name__}")
    for i, layer in enumerate(model):
        check_layer(i, layer)
    layers: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.Dropout):
            continue
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            scale, shift = bn_scale_shift(layer)
            if layers and isinstance(layers[-1], nn.Conv2d | nn.Linear):
                layers[-1] = fold_into(layers[-1], scale, shift)
                continue
            if (len(layers) >= 2 and isinstance(layers[-1], nn.MaxPool2d)
                    and isinstance(layers[-2], nn.Conv2d) and bool((scale > 0).all())):
                layers[-2] = fold_into(layers[-2], scale, shift)
                continue
        layers.append(copy.deepcopy(layer))
    return nn.Sequential(*layers).eval()


def numpy_layers(model: nn.Sequential, prefix: str = "") -> tuple[list[dict], dict[str, np.ndarray]]:
    """The layer list of the model card and the arrays of `weights.npz` for `runtime.numpy_forward`;
    array names start with `prefix` ("m0." for an ensemble's first member)."""
    layers: list[dict] = []
    arrays: dict[str, np.ndarray] = {}

    def keep(key: str, tensor: torch.Tensor) -> str:
        key = prefix + key
        arrays[key] = tensor.detach().cpu().numpy().astype(np.float32)
        return key

    for i, layer in enumerate(model):
        if isinstance(layer, nn.Conv2d | nn.Linear):
            spec = {"op": "conv2d" if isinstance(layer, nn.Conv2d) else "linear",
                    "weight": keep(f"{i}.weight", layer.weight),
                    "bias": keep(f"{i}.bias", layer.bias) if layer.bias is not None else None}
            if isinstance(layer, nn.Conv2d):
                left, right, top, bottom = layer._reversed_padding_repeated_twice  # ints or 'same' resolved
                spec |= {"stride": list(layer.stride), "padding": [top, bottom, left, right]}
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            scale, shift = bn_scale_shift(layer)
            spec = {"op": "affine", "scale": keep(f"{i}.scale", scale), "shift": keep(f"{i}.shift", shift)}
        elif isinstance(layer, nn.ReLU):
            spec = {"op": "relu"}
        elif isinstance(layer, nn.MaxPool2d):
            kernel, stride, padding = (nn.modules.utils._pair(v) for v in (layer.kernel_size, layer.stride,
                                                                         layer.padding))
            spec = {"op": "max_pool", "kernel": list(kernel), "stride": list(stride),
                    "padding": [padding[0], padding[0], padding[1], padding[1]]}
        elif isinstance(layer, nn.ZeroPad2d):
            left, right, top, bottom = layer.padding
            spec = {"op": "zero_pad", "padding": [top, bottom, left, right]}
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            spec = {"op": "global_avg_pool"}
        elif isinstance(layer, nn.Flatten):
            spec = {"op": "flatten"}
        else:  # deployable() checked every layer; this is a bug, not a user mistake
            raise AssertionError(f"unexpected layer {layer!r}")
        layers.append(spec)
    return layers, arrays


# ---------------------------------------------------------------- ONNX fp32 and int8


@contextlib.contextmanager
def quiet():
    """torch.onnx prints progress and warns about torchvision, the quantizer advises pre-processing
    (measured: no change in size or accuracy here); an export should print only its own lines."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: nn.Sequential, path: Path, metadata: dict[str, str]) -> None:
    """fp32 ONNX with a dynamic batch axis; `metadata` goes into the file's metadata_props."""
    example = torch.zeros(1, *contract.SHAPE)
    with quiet():
        program = torch.onnx.export(
            model, (example,), dynamo=True, external_data=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},))
    proto = program.model_proto
    for node in proto.graph.node:  # torch's per-node stack traces and names: bytes the Pi never needs
        del node.metadata_props[:]
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        del value.metadata_props[:]
    proto.producer_name, proto.doc_string = "digitpi", metadata.get("description", "")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    files.write_atomic(path, proto.SerializeToString())


class TrainingImages(CalibrationDataReader):
    """The int8 calibration data: a seeded sample of *training* images, in batches.

    Calibrating on test images would leak the test set into the int8 file's activation ranges.
    """

    def __init__(self, images: np.ndarray, count: int, seed: int, batch: int = 100) -> None:
        pick = np.random.default_rng(seed).choice(len(images), min(count, len(images)), replace=False)
        x = contract.to_model_input(images[np.sort(pick)])
        self.batches = iter([x[i:i + batch] for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: Path, int8_path: Path, reader: TrainingImages, cfg: ExportConfig) -> None:
    """Static int8: int8 weights (per channel), int8 activations with ranges from the reader.

    QDQ, not QOperator: with int8 activations the QOperator graph (QLinearConv) fell to 87 % test
    accuracy on x86 while QDQ matched fp32 (99.25 %), and onnxruntime fuses QDQ into int8 kernels anyway.
    7-bit weights (reduce_range): on an x86 CPU with AVX2 but no VNNI, onnxruntime's fused kernels add
    pairs of 8-bit products in 16 bits, which overflow; the default model read 99.24 % there against
    99.55 % unfused. With 7-bit weights the sums fit: 99.55 % fused and unfused, the same as fp32 within 0.02.
    """
    # in the system's temporary folder: a kill leaves nothing in the export folder
    with tempfile.TemporaryDirectory(prefix="digitpi-int8-") as tmp, quiet():
        out = Path(tmp) / int8_path.name
        quantize_static(str(fp32_path), str(out), reader, quant_format=QuantFormat[cfg.quant_format],
                        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
        files.write_atomic(int8_path, out.read_bytes())


# ---------------------------------------------------------------- one export: write, measure, describe


@dataclass(frozen=True)
class Job:
    """What the writers, the measurements and the card of one export share, prepared before any file."""

    model: nn.Module  # as trained: the reference every variant is measured against
    name: str  # the card's model name, e.g. "fast_cnn" or "keras:sequential"
    args: dict  # the model's builder arguments, as recorded in the card
    deploy: nn.Sequential  # BatchNorm folded, Dropout dropped: what the files hold
    layers: list[dict]  # the card's layer list, which the NumPy backend follows
    arrays: dict[str, np.ndarray]  # the weights of those layers: weights.npz
    info: data.DatasetInfo  # the dataset: classes, calibration and test images
    cfg: ExportConfig
    out_dir: Path
    # An ensemble's members as the card lists them (model, model_args, run, params, layers), in the
    # order of `model.members`; then `layers` is empty and the files run them all. (): one model.
    members: tuple[dict, ...] = ()

    def path(self, variant: str) -> Path:
        return self.out_dir / next(v.file for v in VARIANTS if v.name == variant)

    def model_layers(self) -> list[list[dict]]:
        """The layer list of each model weights.npz holds, read as the runtime reads the card's."""
        return model_layers({"members": self.members} if self.members else {"layers": self.layers})

    def metadata(self) -> dict[str, str]:
        """What the ONNX files carry about themselves (metadata_props), as the card states it."""
        if self.members:
            output = f"log of the mean probability of {len(self.members)} models"
            args = {"digitpi.members": json.dumps([{k: m[k] for k in ("model", "model_args", "run")}
                                                   for m in self.members])}
        else:
            output, args = "logits", {"digitpi.model_args": json.dumps(self.args)}
        return {"description": f"digitpi {self.name}: {self.info.name} digits, {output} (N, {contract.NUM_CLASSES})",
                "digitpi.model": self.name, **args,
                "digitpi.input": json.dumps(contract.describe(INPUT_NAME)),
                "digitpi.classes": json.dumps(list(self.info.classes))}


def prepare(model: nn.Module, name: str, args: dict, out_dir: Path, cfg: ExportConfig, prefix: str = "") -> Job:
    """Check and fold the model and lay out its NumPy weights (names starting with `prefix`): an
    unsupported layer fails here, before any file is written."""
    deploy = deployable(model)
    layers, arrays = numpy_layers(deploy, prefix)
    broken = [key for key, array in arrays.items() if not np.isfinite(array).all()]
    if broken:
        raise ExportError(f"the model's weights hold NaN or infinite values (in {', '.join(broken[:3])}): "
                          "it diverged in training or was saved broken; nothing exported")
    return Job(model, name, args, deploy, layers, arrays, data.dataset_info(cfg.dataset), cfg, out_dir)


@dataclass(frozen=True)
class Member:
    """One trained model of an ensemble, as `export_ensemble` takes it."""

    model: nn.Module
    name: str  # its model name, e.g. "fast_cnn"
    args: dict  # its builder arguments
    run: str  # where it comes from, for the card: the run folder's name


def prepare_ensemble(members: list[Member], out_dir: Path, cfg: ExportConfig) -> Job:
    """Each member checked and folded as `prepare` does one model, its arrays named "m0.", "m1." ...;
    the files hold one graph, `evaluate.Ensemble` of the folded members: log of their mean probability.
    A member that does not take the input contract's images or give one score per class fails here."""
    jobs = [prepare(m.model, m.name, m.args, out_dir, cfg, prefix=f"m{i}.") for i, m in enumerate(members)]
    blank = torch.zeros(1, *contract.SHAPE)
    for member, job in zip(members, jobs):
        try:
            with torch.no_grad():
                shape = tuple(job.deploy(blank).shape)
        except RuntimeError as e:
            raise ExportError(f"{member.run}: {member.name} does not take the input {tuple(blank.shape)} "
                              f"({one_line(e)})") from None
        if shape != (1, len(job.info.classes)):
            raise ExportError(f"{member.run}: {member.name} gives {shape[1:]} scores an image, "
                              f"{job.info.name} has {len(job.info.classes)} classes")
    described = tuple({"model": m.name, "model_args": m.args, "run": m.run, "params": count_params(m.model),
                       "layers": job.layers} for m, job in zip(members, jobs))
    arrays = {key: array for job in jobs for key, array in job.arrays.items()}
    return Job(Ensemble([m.model for m in members]).eval(), " + ".join(m.name for m in members), {},
               Ensemble([job.deploy for job in jobs]).eval(), [], arrays, jobs[0].info, cfg, out_dir, described)


def write_fp32(job: Job, path: Path) -> str:
    """fp32 ONNX of the deployable copy, describing its input and classes in its metadata."""
    export_onnx(job.deploy, path, job.metadata())
    return ""


def write_int8(job: Job, path: Path) -> str:
    """int8 ONNX quantized from the fp32 file (written before it), calibrated on training images."""
    train_x, _ = data.load_split(job.cfg.dataset, "train", job.cfg.data_dir)
    reader = TrainingImages(train_x, job.cfg.calibration_images, job.cfg.calibration_seed)
    quantize_int8(job.path("fp32"), path, reader, job.cfg)
    return f" ({job.cfg.calibration_images} training images for calibration)"


def write_numpy(job: Job, path: Path) -> None:
    """The fp32 arrays of the card's layers, as .npz (no pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, **job.arrays)
    files.write_atomic(path, buffer.getvalue())
    return None  # a copy of arrays in memory: no time worth logging


# A writer makes one variant's file and returns what its log line says after the size and time;
# None: nothing, not even the time. One per row of exportdir.VARIANTS, by name.
WRITERS: dict[str, Callable[[Job, Path], str | None]] = {"fp32": write_fp32, "int8": write_int8,
                                                         "numpy": write_numpy}


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    return torch.cat([model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)]).numpy()


# How a variant's file is run to get logits (N, 10) of float32 input x, by the backend of its row.
MEASURERS: dict[str, Callable[[Job, Path, np.ndarray], np.ndarray]] = {
    "onnxruntime": lambda job, path, x: onnx_logits(path, x),
    "numpy": lambda job, path, x: runtime.NumpyBackend(path, job.model_layers()).logits(x),
}


def write_variants(job: Job, log: Callable[[str], None]) -> None:
    """One file per row of VARIANTS, in the table's order; one log line each with its size and time."""
    for variant in VARIANTS:
        path = job.path(variant.name)
        start = time.perf_counter()
        note = WRITERS[variant.name](job, path)
        timing = "" if note is None else f" in {time.perf_counter() - start:.1f} s{note}"
        log(f"{path.name}: {path.stat().st_size / 1024:.1f} KB{timing}")


@dataclass(frozen=True)
class Measured:
    logits: dict[str, np.ndarray]  # (N, 10) of the torch model ("torch") and of each variant, by name
    accuracy: dict[str, float]  # on the test labels, same keys
    labels: np.ndarray  # (N,) the test labels
    members: tuple[float, ...] = ()  # an ensemble's members' own test accuracy (torch), in order


def measure(job: Job, images: np.ndarray, labels: np.ndarray, log: Callable[[str], None]) -> Measured:
    """Every written variant and the torch model it came from, on the test images; logs the accuracies."""
    start = time.perf_counter()
    x = contract.to_model_input(images)
    logits = {"torch": torch_logits(job.model, x)}
    logits |= {v.name: MEASURERS[v.backend](job, job.path(v.name), x) for v in VARIANTS}

    def correct(scores: np.ndarray) -> float:
        return float((scores.argmax(1) == labels).mean())

    accuracy = {k: correct(v) for k, v in logits.items()}
    members = tuple(correct(torch_logits(m, x)) for m in job.model.members) if job.members else ()
    log("test accuracy " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items())
        + "".join(f", member {i} {100 * a:.2f}%" for i, a in enumerate(members))
        + f" ({time.perf_counter() - start:.1f} s)")
    return Measured(logits, accuracy, labels, members)


def versions() -> dict[str, str]:
    return {"digitpi": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__}


def model_card(job: Job, measured: Measured, source: dict | None) -> dict:
    """The card `model.json`: what the model is and takes, how each file measured, what each file is."""
    cfg, info, logits = job.cfg, job.info, measured.logits
    files = [job.path(v.name) for v in VARIANTS]
    # An ensemble lists its members, each with its builder arguments and layer list, where one
    # model has its own; its output is log(mean probability), whose softmax is that mean.
    members = [m | {"test_accuracy": a} for m, a in zip(job.members, measured.members)]
    meaning = ("log of the members' mean probability (logits-compatible); the runtime's softmax of it is "
               "that mean" if job.members else "logits; the runtime applies softmax for probabilities")
    return {
        "format": CARD_FORMAT,
        "model": job.name,
        **({} if job.members else {"model_args": job.args}),
        "dataset": info.name,
        "classes": list(info.classes),
        "input": contract.describe(INPUT_NAME),
        "output": {"name": OUTPUT_NAME, "shape": [None, len(info.classes)], "meaning": meaning},
        "params": count_params(job.model),
        "test_images": len(measured.labels),
        "test_accuracy": measured.accuracy,
        "fp32_max_abs_logit_diff_vs_torch": float(np.abs(logits["fp32"] - logits["torch"]).max()),
        "int8_agrees_with_fp32": float((logits["int8"].argmax(1) == logits["fp32"].argmax(1)).mean()),
        "quantization": {"method": "onnxruntime static post-training quantization", "format": cfg.quant_format,
                         "weights": f"int8{', ' + SEVEN_BIT if cfg.reduce_range else ''} "
                                    f"per {'channel' if cfg.per_channel else 'tensor'}",
                         "activations": "int8, MinMax ranges",
                         "calibration": f"{cfg.calibration_images} {info.name} training images "
                                        f"(seed {cfg.calibration_seed}), never test images"},
        **({"members": members} if job.members else {"layers": job.layers}),
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": runtime.sha256_file(p)} for p in files},
        "versions": versions(),
        "opset": OPSET,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source or {},
    }


def export_model(model: nn.Module, model_name: str, model_args: dict, out_dir: str | Path,
                 cfg: ExportConfig | None = None, source: dict | None = None, log=None) -> dict:
    """Export a trained model to `out_dir` and return its model card.

    `model` is an nn.Sequential of the layers in SUPPORTED taking the input of `digitpi.contract`
    (float32 (N, 1, 28, 28) = pixel/255, white ink on black) and returning logits (N, 10).
    `model_name`/`model_args` are recorded so the card says what was exported; `source` (any
    JSON-able dict: run folder, Keras file...) too.
    The files are made aside and moved in, the card last (see `write_export`): a failure on the way
    leaves `out_dir` as it was.
    `log(message)` receives one line per step with its time and size.
    """
    cfg = cfg or ExportConfig()
    return write_export(prepare(model, model_name, model_args, Path(out_dir), cfg), source, log)


def export_ensemble(members: list[Member], out_dir: str | Path, cfg: ExportConfig | None = None,
                    source: dict | None = None, log=None) -> dict:
    """Export several trained models as one: the same four files and a card that lists the members.

    The ONNX files run every member on the same input and give log(mean of their probabilities), as
    `evaluate.Ensemble` does; weights.npz holds every member's arrays ("m0.", "m1." ...), which the
    NumPy backend runs and averages likewise. Each member must be exportable alone (`export_model`).
    """
    cfg = cfg or ExportConfig()
    return write_export(prepare_ensemble(members, Path(out_dir), cfg), source, log)


STAGING = "export"  # the hidden folder an export is made in: OUT/.export.PID-TOKEN.tmp


def write_export(job: Job, source: dict | None, log=None) -> dict:
    """Write, measure and describe a prepared export (see `export_model`); returns the sealed card.

    The files are made and measured in a hidden folder inside `out_dir`, then moved into place, the card
    last: until then a failure or Ctrl-C leaves `out_dir` as it was, an earlier export whole. Cut short
    while moving, the files moved are taken back out where there was no export; where there was one,
    its card stays beside files it does not describe: the runtime refuses them by their SHA-256, and
    the next export replaces them. Files of an export's names with no digitpi card beside them (a
    user's own model.onnx) are refused, not replaced."""
    log = log or (lambda message: None)
    replacing = check_out_dir(job.out_dir)
    test_x, test_y = data.load_split(job.cfg.dataset, "test", job.cfg.data_dir)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    files.remove_stale(job.out_dir / STAGING)  # left by a killed export
    staged = dataclasses.replace(job, out_dir=files.temporary_name(job.out_dir / STAGING))
    try:
        staged.out_dir.mkdir()
        write_variants(staged, log)
        sealed = seal(model_card(staged, measure(staged, test_x, test_y, log), source))
        files.write_atomic(staged.out_dir / CARD, (json.dumps(sealed, indent=2) + "\n").encode())
        moved = []
        try:
            for name in exportdir.FILES:  # the card last
                os.replace(staged.out_dir / name, job.out_dir / name)
                moved.append(name)
        except BaseException as e:
            if not replacing:  # files with no card beside them would block the next export
                for name in moved:
                    (job.out_dir / name).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise ExportError(f"cannot write {job.out_dir / name}: {e.strerror or e}") from None
            raise
    finally:
        shutil.rmtree(staged.out_dir, ignore_errors=True)
    if replacing:
        log(f"replaced the export that was in {job.out_dir}")
    return sealed


def check_out_dir(out_dir: Path) -> bool:
    """Whether `out_dir` holds an export to replace. Refused: a folder or link where an export's file
    goes, and files of an export's names with no digitpi card beside them."""
    present = [name for name in exportdir.FILES if os.path.lexists(out_dir / name)]
    for name in present:
        files.check_replaceable(out_dir / name)
    if present and not exportdir.is_export(out_dir):
        raise ExportError(f"{out_dir} holds {', '.join(present)} with no digitpi card beside them (your own files, "
                          "or an export cut short): not replaced; move them away, or choose another --out")
    return bool(present)


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, data_dir: str | None = None,
               log=None) -> dict:
    """Export a training run folder to `out_dir` (default: RUN_DIR/export); returns the card.

    The run's own dataset is used for calibration and testing, found in `data_dir` if given.
    """
    run_dir = Path(run_dir)
    model, run_cfg = load_run(run_dir)
    cfg = ExportConfig(dataset=run_cfg.dataset, data_dir=data_dir or run_cfg.data_dir)
    weights = run_dir / rundir.CHECKPOINT
    source = {"run": str(run_dir.resolve()), "checkpoint_sha256": runtime.sha256_file(weights)}
    return export_model(model, run_cfg.model, run_cfg.model_args, out_dir or run_dir / "export", cfg, source, log)


def export_runs(run_dirs: list[str | Path], out_dir: str | Path, data_dir: str | None = None, log=None) -> dict:
    """Export training runs to `out_dir`: one as `export_run` does, several as one ensemble; returns the card.

    The runs of an ensemble must share a dataset (and so classes, calibration and test images); the
    first run's data folder is used unless `data_dir` is given.
    """
    if len(run_dirs) == 1:
        return export_run(run_dirs[0], out_dir, data_dir, log)
    run_dirs = [Path(d) for d in run_dirs]
    loaded = [load_run(d) for d in run_dirs]
    dataset = shared_dataset(run_dirs, [run_cfg for _, run_cfg in loaded])
    cfg = ExportConfig(dataset=dataset, data_dir=data_dir or loaded[0][1].data_dir)
    members = [Member(model, run_cfg.model, run_cfg.model_args, run_dir.name)
               for run_dir, (model, run_cfg) in zip(run_dirs, loaded)]
    source = {"runs": [str(d.resolve()) for d in run_dirs],
              "checkpoint_sha256": [runtime.sha256_file(d / rundir.CHECKPOINT) for d in run_dirs]}
    return export_ensemble(members, out_dir, cfg, source, log)


def load_run(run_dir: Path) -> tuple[nn.Module, Config]:
    """The trained model and config of a run folder, or a one-line error saying why not."""
    try:
        return rundir.load_checkpoint(run_dir)
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    except (RuntimeError, ValueError, TypeError) as e:  # weights that do not fit the model the config names
        raise ExportError(f"{run_dir}: cannot rebuild the model ({one_line(e)})") from None


def format_card(card: dict, out_dir: Path) -> str:
    """A short summary of an export for the terminal."""
    acc = card["test_accuracy"]
    lines = [f"exported {card['model']} ({card['params']:,} parameters) to {out_dir}"]
    lines += [f"  member {i}: {m['model']} from {m['run']}, {m['params']:,} parameters, test accuracy "
              f"{100 * m['test_accuracy']:.2f}%" for i, m in enumerate(card.get("members", []))]
    lines += [f"  {name:<16} {entry['bytes'] / 1024:7.1f} KB  sha256 {entry['sha256'][:12]}"
              for name, entry in card["files"].items()]
    lines.append("  test accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in acc.items()))
    lines.append(f"  fp32 vs torch: max |logit difference| {card['fp32_max_abs_logit_diff_vs_torch']:.2e}")
    return "\n".join(lines)

