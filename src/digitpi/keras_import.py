"""Bring a Keras `.h5` model (the legacy HDF5 file `model.save('x.h5')` writes) to the Pi.

The file is read with h5py alone, no TensorFlow: the `model_config` JSON attribute describes a
Sequential model, `model_weights/<layer>/` holds its arrays. Each Keras layer becomes the same
torch layer the zoo uses, so the result goes through `digitpi.export` like one of our own models.

Three layout differences are converted here, because getting any of them wrong still runs but
gives wrong answers:
- conv kernels: Keras stores (H, W, in, out), torch wants (out, in, H, W);
- dense kernels: Keras stores (in, out), torch wants (out, in);
- flatten order: Keras flattens a feature map channels-last (H, W, C), torch channels-first
  (C, H, W), so the first Dense after a Flatten gets its input rows permuted.
'same' padding follows TensorFlow's rule (the odd pixel of padding goes right/bottom), written
as an explicit nn.ZeroPad2d when it is lopsided.

A final softmax is dropped: every digitpi model returns logits and the runtime applies softmax,
so the Pi reports exactly the probabilities Keras would.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from torch import nn

from digitpi import UserError, one_line
from digitpi.contract import IMAGE_SIZE, NUM_CLASSES, PIXEL_SCALE, WHITE
from digitpi.export import ExportConfig, export_model
from digitpi.models import MODELS

SUPPORTED = ("InputLayer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", "Activation", "ReLU",
             "BatchNormalization")
# What a Keras course feeds its model: x_train.reshape(-1, 28, 28, 1) / 255, i.e. our input contract.
INPUT_ASSUMPTION = (f"float32 pixel/{WHITE} in [0, 1], white ink on black (MNIST), as the course's "
                    f"`x.reshape(-1, {IMAGE_SIZE}, {IMAGE_SIZE}, 1) / {WHITE}`; Keras input shape {{shape}}")


MAX_PARAMETERS = 64_000_000  # weights read from one file: 256 MB of float32 (the course's largest model has 1.2 M)


class KerasImportError(UserError):
    """A Keras file digitpi cannot convert; the message names the file and the layer."""


@dataclass
class ImportedModel:
    model: nn.Sequential  # eval mode; (N, 1, 28, 28) float in [0, 1] -> logits (N, 10)
    name: str  # the Keras model's own name, e.g. "sequential"
    zoo_name: str | None  # the digitpi zoo model with the same architecture, if any
    input_shape: tuple[int, ...]  # as Keras declares it, without the batch axis
    source: dict = field(default_factory=dict)  # file, sha256, keras version, layers: for the model card


# ---------------------------------------------------------------- reading the file


def as_text(value) -> str:
    """h5py returns attributes as str or bytes depending on who wrote the file (Keras 2 vs 3)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def read_h5(path: Path) -> tuple[dict, dict[str, list[np.ndarray]], dict]:
    """(model_config, weights per layer name in file order, file attributes) of a Keras .h5."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise KerasImportError(f"{path}: no such file") from None
    except OSError:
        raise KerasImportError(f"{path}: not an HDF5 file (a Keras 3 `.keras` zip? save with "
                               "model.save('model.h5') instead)") from None
    with f:
        if "model_config" not in f.attrs:
            raise KerasImportError(f"{path}: no model_config attribute (saved with save_weights?); "
                                   "save the whole model with model.save('model.h5')")
        try:
            config = json.loads(as_text(f.attrs["model_config"]))
            group = f.get("model_weights", f)  # weights-only files keep layers at the top
            weights, total = {}, 0
            for name, layer in group.items():
                if not hasattr(layer, "attrs") or "weight_names" not in layer.attrs:
                    continue
                # weight_names are paths inside the layer group: 'conv2d/kernel:0' (Keras 2)
                # or 'sequential/conv2d/kernel' (Keras 3), in the order the layer defines them.
                arrays = [layer[as_text(w)] for w in layer.attrs["weight_names"]]
                total += sum(int(a.size) for a in arrays)
                if total > MAX_PARAMETERS:  # sizes come from the header: a compressed file can claim terabytes
                    raise KerasImportError(f"{path}: more than {MAX_PARAMETERS:,} weights, far too many for a Pi")
                weights[name] = [np.asarray(a, dtype=np.float32) for a in arrays]
            info = {k: as_text(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
        except KerasImportError:
            raise
        except Exception as e:  # h5py and json raise many types on a crafted or damaged file
            raise KerasImportError(f"{path}: damaged or not a Keras model file ({type(e).__name__}: "
                                   f"{one_line(e)})") from None
    if not isinstance(config, dict):
        raise KerasImportError(f"{path}: model_config is not a Keras model description")
    return config, weights, info




def sequential_layers(config: dict, path: Path) -> tuple[str, list[dict]]:
    """The model name and its list of {class_name, config} layers, Keras 2 or Keras 3 layout."""
    kind = config.get("class_name")
    if kind != "Sequential":
        raise KerasImportError(f"{path}: only Sequential models are supported, this one is {kind!r}")
    body = config.get("config")
    if isinstance(body, list):  # Keras <= 2.2: the config is the list of layers itself
        return "sequential", body
    return body.get("name", "sequential"), body["layers"]


def input_shape_of(layers: list[dict], path: Path) -> tuple[int, ...]:
    """The declared input shape without the batch axis: InputLayer (batch_shape in Keras 3,
    batch_input_shape in Keras 2) or the first layer's batch_input_shape / input_shape."""
    for layer in layers[:1]:
        cfg = layer["config"]
        for key in ("batch_shape", "batch_input_shape"):
            if cfg.get(key):
                return tuple(cfg[key][1:])
        if cfg.get("input_shape"):
            return tuple(cfg["input_shape"])
    raise KerasImportError(f"{path}: the model declares no input shape (build it with keras.Input((28, 28, 1)))")


# ---------------------------------------------------------------- Keras layers -> torch layers


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) along one axis: the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Converter:
    """Walks the Keras layers in order, tracking the Keras-side shape, emitting torch layers."""

    def __init__(self, path: Path, input_shape: tuple[int, ...]) -> None:
        self.path = path
        self.layers: list[nn.Module] = []
        self.flattened_from: tuple[int, int, int] | None = None  # (H, W, C) before a Flatten
        self.dropped_softmax = False  # the Keras model ends in softmax (probabilities), ours in logits
        if input_shape in ((IMAGE_SIZE, IMAGE_SIZE, 1), (IMAGE_SIZE, IMAGE_SIZE)):
            self.shape: tuple[int, ...] = (IMAGE_SIZE, IMAGE_SIZE, 1)
        elif input_shape == (IMAGE_SIZE * IMAGE_SIZE,):
            # the course's MLP reshapes images to 784 in NumPy; torch's flatten of (1, 28, 28) is the same order
            self.layers.append(nn.Flatten())
            self.shape = (IMAGE_SIZE * IMAGE_SIZE,)
        else:
            raise KerasImportError(f"{path}: input shape {input_shape} is not a 28x28 grey image "
                                   "((28, 28, 1), (28, 28) or (784,))")

    def fail(self, name: str, kind: str, why: str) -> NoReturn:
        raise KerasImportError(f"{self.path}: layer {name!r} ({kind}): {why}")

    def apply_activation(self, name: str, kind: str, act: str, last: bool) -> None:
        if act == "relu":
            self.layers.append(nn.ReLU())
        elif act == "softmax" and last:
            self.dropped_softmax = True  # logits out; the runtime's softmax gives Keras's probabilities
        elif act != "linear":
            where = "" if act != "softmax" else " except as the last layer"
            self.fail(name, kind, f"activation {act!r} is not supported{where} (relu, linear, final softmax)")

    def add(self, layer: dict, weights: list[np.ndarray], last: bool) -> None:
        kind, cfg = layer["class_name"], layer["config"]
        name = cfg.get("name", kind)
        if kind not in SUPPORTED:
            self.fail(name, kind, f"unsupported layer type; digitpi converts {', '.join(SUPPORTED)}")
        if cfg.get("data_format", "channels_last") != "channels_last":
            self.fail(name, kind, "only data_format='channels_last' is supported")
        if kind in ("Conv2D", "MaxPooling2D") and len(self.shape) != 3:
            self.fail(name, kind, f"needs an (H, W, C) input, gets {self.shape}")
        try:
            getattr(self, kind.lower())(name, kind, cfg, weights, last)  # one method per Keras class
        except KerasImportError:
            raise
        except Exception as e:  # a config or weight this reader does not know, or a crafted one
            self.fail(name, kind, f"unexpected config or weights ({type(e).__name__}: {one_line(e)}); "
                                  "was it saved by Keras 2 or 3?")

    def inputlayer(self, name, kind, cfg, weights, last) -> None:
        pass  # the input shape was read before the walk

    def conv2d(self, name, kind, cfg, weights, last) -> None:
        (h, w, c_in), (kh, kw), (sh, sw) = self.shape, pair(cfg["kernel_size"]), pair(cfg["strides"])
        if pair(cfg.get("dilation_rate", 1)) != (1, 1) or cfg.get("groups", 1) != 1:
            self.fail(name, kind, "dilated or grouped convolutions are not supported")
        kernel = weights[0]  # (kh, kw, in, out)
        expected = (kh, kw, c_in, cfg["filters"])
        if kernel.shape != expected:  # checked before the layer is built: its size is then the file's, not the config's
            self.fail(name, kind, f"unexpected config or weights (kernel {kernel.shape}, the config says {expected})")
        conv = nn.Conv2d(c_in, cfg["filters"], (kh, kw), stride=(sh, sw), bias=cfg.get("use_bias", True))
        if cfg["padding"] == "same":
            (top, bottom), (left, right) = same_padding(h, kh, sh), same_padding(w, kw, sw)
            if (top, left) == (bottom, right):
                conv.padding = (top, left)
            else:
                self.layers.append(nn.ZeroPad2d((left, right, top, bottom)))
            h, w = math.ceil(h / sh), math.ceil(w / sw)
        elif cfg["padding"] == "valid":
            h, w = (h - kh) // sh + 1, (w - kw) // sw + 1
        else:
            self.fail(name, kind, f"padding {cfg['padding']!r} is not supported (valid, same)")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))  # HWIO -> OIHW
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(weights[1]))
        self.layers.append(conv)
        self.shape = (h, w, cfg["filters"])
        self.apply_activation(name, kind, cfg.get("activation", "linear"), last)

    def maxpooling2d(self, name, kind, cfg, weights, last) -> None:
        (h, w, c), size = self.shape, pair(cfg["pool_size"])
        stride = pair(cfg.get("strides") or size)
        if cfg.get("padding", "valid") != "valid":
            self.fail(name, kind, "only padding='valid' is supported for pooling")
        self.layers.append(nn.MaxPool2d(size, stride))  # floor mode, like Keras 'valid'
        self.shape = ((h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1, c)

    def batchnormalization(self, name, kind, cfg, weights, last) -> None:
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) else axis
        if axis not in (-1, len(self.shape)):
            self.fail(name, kind, f"only normalization over the channel axis (-1) is supported, got {axis}")
        channels = self.shape[-1]
        bn = (nn.BatchNorm2d if len(self.shape) == 3 else nn.BatchNorm1d)(channels, eps=cfg.get("epsilon", 1e-3))
        arrays = list(weights)
        gamma = arrays.pop(0) if cfg.get("scale", True) else np.ones(channels, np.float32)
        beta = arrays.pop(0) if cfg.get("center", True) else np.zeros(channels, np.float32)
        mean, var = arrays
        with torch.no_grad():
            for tensor, value in ((bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean), (bn.running_var, var)):
                tensor.copy_(torch.from_numpy(value))
        self.layers.append(bn)

    def flatten(self, name, kind, cfg, weights, last) -> None:
        self.layers.append(nn.Flatten())
        if len(self.shape) == 3:
            self.flattened_from = self.shape
        self.shape = (int(np.prod(self.shape)),)

    def dense(self, name, kind, cfg, weights, last) -> None:
        if len(self.shape) != 1:
            self.fail(name, kind, f"needs a flat input, gets {self.shape} (add a Flatten before it)")
        kernel = weights[0]  # (in, out), inputs in Keras's flatten order
        if self.flattened_from is not None:
            h, w, c = self.flattened_from  # rows ordered (h, w, c) -> torch's (c, h, w)
            kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
            self.flattened_from = None
        expected = (self.shape[0], cfg["units"])
        if kernel.shape != expected:  # checked before the layer is built
            self.fail(name, kind, f"unexpected config or weights (kernel {kernel.shape}, the config says {expected})")
        linear = nn.Linear(self.shape[0], cfg["units"], bias=cfg.get("use_bias", True))
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            if linear.bias is not None:
                linear.bias.copy_(torch.from_numpy(weights[1]))
        self.layers.append(linear)
        self.shape = (cfg["units"],)
        self.apply_activation(name, kind, cfg.get("activation", "linear"), last)

    def dropout(self, name, kind, cfg, weights, last) -> None:
        self.layers.append(nn.Dropout(cfg["rate"]))  # identity at inference, kept so the layout reads the same

    def activation(self, name, kind, cfg, weights, last) -> None:
        self.apply_activation(name, kind, cfg["activation"], last)

    def relu(self, name, kind, cfg, weights, last) -> None:
        if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            self.fail(name, kind, "only a plain ReLU (no max_value, slope or threshold) is supported")
        self.layers.append(nn.ReLU())


def zoo_match(model: nn.Sequential) -> str | None:
    """The zoo model this is the same network as (same layer types and shapes), if any."""
    def layout(m: nn.Module) -> list:
        return [(type(x).__name__, tuple((k, tuple(v.shape)) for k, v in x.state_dict().items()))
                for x in m.modules() if not list(x.children())]

    mine = layout(model)
    for name, build in MODELS.items():
        if layout(build()) == mine:
            return name
    return None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_keras(path: str | Path) -> ImportedModel:
    """Read a Keras .h5 and return the equivalent torch model (eval mode), checked on a blank image."""
    path = Path(path)
    config, weights, info = read_h5(path)
    try:
        name, layers = sequential_layers(config, path)
        input_shape = input_shape_of(layers, path)
        converter = Converter(path, input_shape)
        body = [layer for layer in layers if layer["class_name"] != "InputLayer"]
        for i, layer in enumerate(body):
            layer_name = layer["config"].get("name", layer["class_name"])
            expected = weights.get(layer_name, [])
            converter.add(layer, expected, last=i == len(body) - 1)
        if converter.shape != (NUM_CLASSES,):
            raise KerasImportError(f"{path}: the model outputs {converter.shape}, "
                                   f"expected ({NUM_CLASSES},) digit scores")
        model = nn.Sequential(*converter.layers).eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))  # shapes agree end to end
    except KerasImportError:
        raise
    except Exception as e:  # a model_config of another shape than Keras writes (crafted or damaged)
        raise KerasImportError(f"{path}: unexpected model_config ({type(e).__name__}: {one_line(e)}); "
                               "was it saved by Keras 2 or 3?") from None
    source = {
        "format": "keras-h5",
        "file": path.name,
        "sha256": sha256(path),
        **{f"keras_{k}" if k == "backend" else k: v for k, v in info.items()},
        "keras_model_name": name,
        "keras_layers": [layer["class_name"] for layer in body],
        "input": INPUT_ASSUMPTION.format(shape=input_shape),
        "pixel_scale": PIXEL_SCALE,
        "keras_output": ("probabilities (final softmax, applied here by the runtime)" if converter.dropped_softmax
                         else "logits (no final softmax)"),
    }
    return ImportedModel(model, name, zoo_match(model), input_shape, source)


UNTRAINED_BELOW = 0.90  # test accuracy: the course's trained models read 98-99 %, a model saved before fit ~10 %


def accuracy_warning(card: dict) -> str | None:
    """A sentence for a model that reads too few test digits to have been trained, else None."""
    accuracy = card["test_accuracy"]["fp32"]
    if accuracy >= UNTRAINED_BELOW:
        return None
    return (f"the imported model reads only {100 * accuracy:.1f} % of the {card['test_images']:,} MNIST test "
            f"digits (a trained course model reads 98-99 %): was it saved before model.fit? Exported all the same")


def default_out_dir(path: Path) -> Path:
    """`MNIST CNN.h5` -> `MNIST CNN-export/` beside it, like a run's `export/` folder."""
    return path.with_name(f"{path.stem}-export")


def import_to_folder(path: str | Path, out_dir: str | Path | None = None, data_dir: str | None = None,
                     log=None) -> tuple[ImportedModel, dict]:
    """Convert a Keras .h5 and write the same export folder as `digitpi export`; returns (model, card).

    Nothing is written when the file cannot be converted: conversion finishes before export starts.
    """
    path = Path(path)
    imported = import_keras(path)
    name = f"keras:{imported.zoo_name or imported.name}"
    card = export_model(imported.model, name, {}, out_dir or default_out_dir(path),
                        ExportConfig(data_dir=data_dir), source=imported.source, log=log)
    return imported, card
