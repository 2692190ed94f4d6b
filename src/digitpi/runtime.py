"""Read digits with an exported model: the Raspberry Pi side, without torch.

Imports only numpy at the top; onnxruntime is imported when a session is created, so the pure-NumPy
backend still works on a machine where onnxruntime is missing. An export folder (`digitpi export`,
laid out in `exportdir`) holds one file per variant and the card `model.json`; the card says how
pixels become model input, and its SHA-256 sums are checked before a file is used, so a
half-copied or edited file is refused instead of giving quietly wrong answers. The card itself is
checked when read (`digitpi.card`), and a loaded model runs one blank image before `load` returns:
a broken export fails at start, not on every request.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitpi import UserError, one_line, onnxprobe
from digitpi.card import ModelFileError, model_layers, read_card
from digitpi.contract import to_model_input
from digitpi.exportdir import BACKENDS, CARD, DEFAULT_PRECISION, PRECISIONS, has_seven_bit_weights, variant

NUMPY_CHUNK = 32  # images per NumPy pass: im2col columns of C x 9 x 32 x 784 floats, 14 MB in mid_cnn, 29 in best_cnn

log = logging.getLogger(__name__)  # unconfigured, a warning prints as one line on stderr


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # int64 (N,): the most probable class index of each image
    probabilities: np.ndarray  # float32 (N, 10): softmax of the logits, rows sum to 1

    def __iter__(self):
        """`labels, probabilities = classifier.predict(x)` reads naturally at call sites."""
        return iter((self.labels, self.probabilities))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_file(folder: Path, card: dict, name: str) -> Path:
    """`folder/name` after checking it against the card's SHA-256: never run a file the card does not vouch for."""
    path = folder / name
    entry = card.get("files", {}).get(name)
    if entry is None:
        raise ModelFileError(f"{folder / CARD} lists no {name}; export the run again")
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; copy the whole export folder")
    if sha256_file(path) != entry["sha256"]:
        raise ModelFileError(f"{path} does not match the SHA-256 in {CARD} (changed or corrupt): "
                             "copy it again or re-export")
    return path


# ---------------------------------------------------------------- output


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # no overflow for large logits
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def log_mean_softmax(logits: list[np.ndarray]) -> np.ndarray:
    """An ensemble's output from its members' logits (each (N, 10)): log of their mean probability, as
    logsumexp of the log-probabilities minus log(count), finite where a probability underflows.
    The NumPy twin of `evaluate.Ensemble`; softmax of it is the mean probability."""
    log_probs = np.stack([log_softmax(x) for x in logits])  # (members, N, 10)
    top = log_probs.max(axis=0)
    return top + np.log(np.exp(log_probs - top).mean(axis=0))


# ---------------------------------------------------------------- the pure-NumPy forward pass


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Sliding (kh, kw) windows of (N, C, H, W) at `stride`: a view (N, C, H', W', kh, kw), no copy."""
    view = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1]]


def pad(x: np.ndarray, padding: list[int], value: float = 0.0) -> np.ndarray:
    """Pad (N, C, H, W) by [top, bottom, left, right]."""
    top, bottom, left, right = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: list[int],
           padding: list[int]) -> np.ndarray:
    """im2col by a strided view, then one matrix product: (N, C, H, W) -> (N, O, H', W').

    The columns are laid out (C, kh, kw, N, H', W'), so the one copy that makes them moves whole rows
    of the image: 1.2-4.7x faster a layer than letting tensordot gather them kernel-innermost (measured on
    this project's layer shapes, batch 1 and 256)."""
    cols = windows(pad(x, padding), weight.shape[2:], stride).transpose(1, 4, 5, 0, 2, 3)
    n, height, width = cols.shape[3:]
    out = weight.reshape(len(weight), -1) @ cols.reshape(-1, n * height * width)  # (O, N * H' * W')
    if bias is not None:
        out += bias[:, None]  # in place, before the one copy that puts N first
    return np.ascontiguousarray(out.reshape(-1, n, height, width).transpose(1, 0, 2, 3))


def max_pool(x: np.ndarray, kernel: list[int], stride: list[int], padding: list[int]) -> np.ndarray:
    """Elementwise max over the kh * kw strided shifts of the input: ~10x faster than reducing a window view."""
    x = pad(x, padding, -np.inf)
    (kh, kw), (sh, sw) = kernel, stride
    rows, cols = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            shifted = x[:, :, i:i + sh * (rows - 1) + 1:sh, j:j + sw * (cols - 1) + 1:sw]
            out = shifted.copy() if out is None else np.maximum(out, shifted, out=out)
    return out


def affine(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """A BatchNorm that could not be folded: per-channel x * scale + shift (channels on axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.reshape(shape) + shift.reshape(shape)


def numpy_forward(layers: list[dict], weights, x: np.ndarray) -> np.ndarray:
    """Logits of float32 input `x` (N, 1, 28, 28) from the card's layer list and the exported arrays."""
    for layer in layers:
        op = layer["op"]
        if op == "conv2d":
            bias = weights[layer["bias"]] if layer.get("bias") else None
            x = conv2d(x, weights[layer["weight"]], bias, layer["stride"], layer["padding"])
        elif op == "affine":
            x = affine(x, weights[layer["scale"]], weights[layer["shift"]])
        elif op == "relu":
            x = np.maximum(x, 0)  # not in place: x may be the caller's own array
        elif op == "max_pool":
            x = max_pool(x, layer["kernel"], layer["stride"], layer["padding"])
        elif op == "zero_pad":
            x = pad(x, layer["padding"])
        elif op == "global_avg_pool":
            x = x.mean(axis=(2, 3), keepdims=True)
        elif op == "flatten":
            x = x.reshape(len(x), -1)
        elif op == "linear":
            x = x @ weights[layer["weight"]].T
            if layer.get("bias"):
                x = x + weights[layer["bias"]]
        else:
            raise ModelFileError(f"the model card names an unknown layer {op!r}; upgrade digitpi")
    return x


class NumpyBackend:
    """The exported fp32 weights run by NumPy: slower than onnxruntime, but needs nothing else.

    `models` holds one layer list (`card.model_layers`): the logits of that model; several (an
    ensemble's members, their arrays in one file): log of their mean probability, as the ONNX graph gives.
    """

    def __init__(self, path: Path, models: list[list[dict]]) -> None:
        with np.load(path, allow_pickle=False) as archive:  # no pickle: a weights file cannot run code
            self.weights = {k: archive[k] for k in archive.files}
        self.models = models

    def forward(self, x: np.ndarray) -> np.ndarray:
        logits = [numpy_forward(layers, self.weights, x) for layers in self.models]
        return logits[0] if len(logits) == 1 else log_mean_softmax(logits)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.forward(x[i:i + NUMPY_CHUNK]) for i in range(0, len(x), NUMPY_CHUNK)])


class OnnxBackend:
    """An onnxruntime session on one ONNX file; the input name comes from the graph, not from here."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # a Pi serving one request at a time: 1 is fastest per image
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def onnxruntime_available() -> bool:
    """Installed, found without importing it: an import can kill the process (see onnxprobe)."""
    return onnxprobe.onnxruntime_installed()


CPUINFO = Path("/proc/cpuinfo")  # Linux: the CPU's flags


def int8_sums_overflow_here() -> bool:
    """An x86 CPU whose flags lack VNNI: onnxruntime's fused int8 kernels add pairs of 8-bit products in
    16 bits there, which overflow with full 8-bit weights (a default model read 99.24 % of the test set
    in int8 against 99.57 % in fp32); exports since 2026-12-04 keep weights to 7 bits, whose sums fit.
    False where the flags are unknown (no /proc/cpuinfo) or the CPU is not x86."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), None)
    return flags is not None and not any("vnni" in flag for flag in flags)


# ---------------------------------------------------------------- the classifier


class Classifier:
    """A loaded export folder: `Classifier.load(DIR).predict(images)` -> labels and probabilities."""

    def __init__(self, card: dict, backend, precision: str, backend_name: str) -> None:
        self.card = card  # the model card (model.json) as a dict
        self.backend = backend
        self.precision = precision  # what actually runs: the NumPy backend always runs fp32 weights
        self.backend_name = backend_name  # "onnxruntime" or "numpy"
        preprocessing = card["input"]
        self.scale = float(preprocessing["scale"])
        self.shape = tuple(preprocessing["shape"][1:])  # without the batch axis, e.g. (1, 28, 28)
        self.classes = list(card["classes"])

    @classmethod
    def load(cls, folder: str | Path, precision: str | None = None, backend: str = "auto",
             threads: int = 1) -> Classifier:
        """Load an export folder after checking the card's SHA-256 of the file that will run.

        `precision=None` runs DEFAULT_PRECISION (int8), except an int8 file that misreads on this CPU
        (8-bit weights on x86 without VNNI, see int8_sums_overflow_here): then fp32, and one line says
        why. An explicit "int8" runs int8 there too, with the same line as a warning.
        `backend="auto"` takes onnxruntime when it is installed and runs this file on this CPU, else
        NumPy (which runs the fp32 weights whatever `precision` says, as it has no int8 kernels) and
        logs one line saying why.
        """
        if precision is not None and precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFileError(f"no export folder {folder}")
        card = read_card(folder)
        if backend != "numpy":  # onnxruntime only after a child process has run this file here (onnxprobe)
            asked = variant(precision or DEFAULT_PRECISION, "onnxruntime")
            overflows = asked.precision == "int8" and not has_seven_bit_weights(card) and int8_sums_overflow_here()
            chosen = variant("fp32", "onnxruntime") if overflows and precision is None else asked
            path = verified_file(folder, card, chosen.file)
            problem = onnxprobe.problem(path, card["files"][chosen.file]["sha256"])
            if problem is None:
                if overflows:
                    log.warning("digitpi: %s has 8-bit weights, whose int8 sums overflow on this CPU (x86 without "
                                "VNNI) and misread digits: %s", folder / asked.file,
                                "reading digits with fp32 weights (export it again for int8)" if precision is None
                                else "export it again, or use --precision fp32")
                return cls.started(card, lambda: OnnxBackend(path, threads), chosen, path)
            if backend == "onnxruntime":
                raise UserError(f"{problem}: use the NumPy backend (--backend numpy)")
            log.warning("digitpi: %s: reading digits with the NumPy backend (fp32 weights)", problem)
        chosen = variant(precision or DEFAULT_PRECISION, "numpy")
        path = verified_file(folder, card, chosen.file)
        return cls.started(card, lambda: NumpyBackend(path, model_layers(card)), chosen, path)

    @classmethod
    def started(cls, card: dict, make_backend, chosen, path: Path) -> Classifier:
        """A classifier on `make_backend()` that has read one blank image: an export that does not run
        as its card says (a weight the layer list names but the file lacks, shapes that do not fit,
        classes the model does not give) fails here, at start, not on every request."""
        try:
            classifier = cls(card, make_backend(), chosen.precision, chosen.backend)
            blank = classifier.logits(np.zeros((1, *classifier.shape), np.float32))
        except UserError:
            raise
        except Exception as e:
            raise ModelFileError(f"{path} does not run as {CARD} describes it ({one_line(e)}): export again") from None
        if blank.shape != (1, len(classifier.classes)) or not np.isfinite(blank).all():
            raise ModelFileError(f"{path} gives logits of shape {blank.shape} for one image, {CARD} lists "
                                 f"{len(classifier.classes)} classes: export again")
        return classifier

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Raw scores (N, 10) for images as `predict` takes them."""
        return self.backend.logits(to_model_input(images, self.scale, self.shape))

    def predict(self, images: np.ndarray) -> Prediction:
        """Labels and probabilities of a batch (N, 28, 28) or one image (28, 28), uint8 or float in [0, 1]."""
        probabilities = softmax(self.logits(images))
        return Prediction(probabilities.argmax(axis=1).astype(np.int64), probabilities)
