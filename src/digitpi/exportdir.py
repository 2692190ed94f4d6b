"""The export folder that `digitpi export` writes, in one place: the card's name and one row per variant.

    DIR/model.onnx        fp32, run by onnxruntime
    DIR/model.int8.onnx   int8 (quantized from model.onnx), run by onnxruntime
    DIR/weights.npz       the fp32 weights, run by the NumPy backend where onnxruntime is missing
    DIR/model.json        the model card, written last: input, classes, test accuracy, SHA-256 per file

An ensemble of runs (`digitpi export RUN_A RUN_B --out DIR`) has the same four files: ONNX graphs that
run every member and average their probabilities, every member's arrays in weights.npz ("m0.", "m1."
...), and a card that lists the members where one model's card has its layer list.

`VARIANTS` drives export (one writer and one measurement per row, in `export`), `Classifier.load`,
the CLI's `--precision`/`--backend` choices and `digitpi bench infer`: a new format is one row
here plus one writer there. No imports beyond the standard library: the CLI reads this table
while it builds its parser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CARD = "model.json"
CARD_FORMAT = "digitpi-export/1"
MAX_CARD_BYTES = 2**24  # cards are a few KB, an ensemble's tens of KB


@dataclass(frozen=True)
class Variant:
    name: str  # its key in the card's test_accuracy, and in export.WRITERS
    file: str  # its file in the export folder
    precision: str  # of the weights as they run: fp32 | int8
    backend: str  # what runs it: onnxruntime | numpy


# In the order export writes them: int8 is quantized from the fp32 file.
VARIANTS = (
    Variant("fp32", "model.onnx", "fp32", "onnxruntime"),
    Variant("int8", "model.int8.onnx", "int8", "onnxruntime"),
    Variant("numpy", "weights.npz", "fp32", "numpy"),
)
# In the card's quantization "weights" where int8 weights keep to 7 bits, whose sums do not overflow on x86
# without VNNI: export writes it; there, `Classifier.load` runs a file without it in fp32 unless int8 is asked for.
SEVEN_BIT = "7-bit range"
DEFAULT_PRECISION = "int8"  # what `Classifier.load` runs unless told (but see its docstring): a third of the size
PRECISIONS = tuple(sorted(dict.fromkeys(v.precision for v in VARIANTS), key=lambda p: p != DEFAULT_PRECISION))
BACKENDS = ("auto", *dict.fromkeys(v.backend for v in VARIANTS))  # auto: onnxruntime when installed, else numpy


FILES = (*(v.file for v in VARIANTS), CARD)  # all an export folder holds, card last: the order they are put in place


def is_export(folder: Path) -> bool:
    """Whether `folder` has a digitpi model card (sound or not): whose files `digitpi export` may replace,
    where a user's own model.onnx or a Keras model.json must be left alone."""
    path = folder / CARD
    try:
        if not path.is_file() or path.stat().st_size > MAX_CARD_BYTES:  # a FIFO would hang the read
            return False
        card = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON
        return False
    return isinstance(card, dict) and card.get("format") == CARD_FORMAT


def variant(precision: str, backend: str) -> Variant:
    """The row that runs `precision` on `backend`. The NumPy backend has fp32 weights only and
    runs them whatever `precision` says (it has no int8 kernels)."""
    rows = [v for v in VARIANTS if v.backend == backend]
    return next((v for v in rows if v.precision == precision), rows[0])


def has_seven_bit_weights(card: dict) -> bool:
    """Whether the card marks its int8 weights as 7-bit. The quantization entry is free text that read_card
    does not check, so a card from another tool may hold any JSON there: anything else is "not marked"."""
    quantization = card.get("quantization")
    return isinstance(quantization, dict) and SEVEN_BIT in str(quantization.get("weights", ""))
