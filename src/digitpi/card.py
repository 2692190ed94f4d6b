"""The model card (`model.json` of an export folder): read, checked against its schema, sealed.

The runtime trusts the card for how pixels become model input (scale, shape), for the classes and
for the NumPy backend's layer list (one per member for an ensemble: `model_layers`); a card that
lost a field or had one edited would otherwise start a server that says healthy and fails on every
request, or answers quietly wrong. So a card is checked when it is read: every field the runtime
uses has its type and shape, and its own SHA-256 (`card_sha256`, over the rest of the card, written
by `digitpi export`) must match, so a hand edit is refused by name. Cards written before the
checksum existed are checked by schema only.

No torch: the Raspberry Pi reads cards through here.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from digitpi import UserError
from digitpi.contract import IMAGE_SIZE, SHAPE
from digitpi.exportdir import CARD, CARD_FORMAT, MAX_CARD_BYTES

CHECKSUM = "card_sha256"


class ModelFileError(UserError):
    """An export folder that is missing, incomplete or altered; the message says which file."""


def digest(card: dict) -> str:
    """SHA-256 of the card without its checksum, in a canonical JSON form (sorted keys, no spaces)."""
    body = {k: v for k, v in card.items() if k != CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(card: dict) -> dict:
    """`card` with its checksum, as `digitpi export` writes it."""
    return {**card, CHECKSUM: digest(card)}


def read_card(folder: str | Path) -> dict:
    """The checked model card of an export folder, with a one-line error when it is absent, unreadable,
    altered or incomplete."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise ModelFileError(f"no model card {CARD} in {folder}: export a run with `digitpi export RUN_DIR`")
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ModelFileError(f"{path}: {path.stat().st_size:,} bytes, too large for a model card")
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: unreadable model card ({e})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelFileError(f"{path}: not a digitpi model card (expected format {CARD_FORMAT!r})")
    if CHECKSUM in card and card[CHECKSUM] != digest(card):
        raise ModelFileError(f"{path} was changed after export (its {CHECKSUM} does not match): export again")
    problem = schema_problem(card)
    if problem:
        raise ModelFileError(f"{path}: incomplete or invalid model card ({problem}): export again")
    return card


# ---------------------------------------------------------------- the schema


def is_int(x, low: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def ints(x, n: int, low: int = 0, high: int = IMAGE_SIZE) -> bool:
    """A list of `n` ints in [low, high]: kernels, strides and padding are never larger than the input."""
    return isinstance(x, list) and len(x) == n and all(is_int(v, low) and v <= high for v in x)


def is_name(x) -> bool:
    return isinstance(x, str) and bool(x)


# What each op of the NumPy backend reads from its layer entry (runtime.numpy_forward).
LAYER_FIELDS = {
    "conv2d": {"weight": is_name, "bias": lambda x: x is None or is_name(x), "stride": lambda x: ints(x, 2, 1),
               "padding": lambda x: ints(x, 4)},
    "linear": {"weight": is_name, "bias": lambda x: x is None or is_name(x)},
    "affine": {"scale": is_name, "shift": is_name},
    "max_pool": {"kernel": lambda x: ints(x, 2, 1), "stride": lambda x: ints(x, 2, 1), "padding": lambda x: ints(x, 4)},
    "zero_pad": {"padding": lambda x: ints(x, 4)},
    "relu": {}, "flatten": {}, "global_avg_pool": {},
}


def layer_problem(i: int, layer) -> str | None:
    op = layer.get("op") if isinstance(layer, dict) else layer
    if not isinstance(op, str) or op not in LAYER_FIELDS:
        return f"layer {i}: unknown op {op!r}"
    for key, valid in LAYER_FIELDS[layer["op"]].items():
        if key not in layer and key != "bias":
            return f"layer {i} ({layer['op']}): no {key!r}"
        if not valid(layer.get(key)):
            return f"layer {i} ({layer['op']}): invalid {key!r}"
    return None


def schema_problem(card: dict) -> str | None:
    """What is wrong with the fields the runtime reads, or None."""
    classes, spec, files = card.get("classes"), card.get("input"), card.get("files")
    if not is_name(card.get("model")):
        return "no model name"
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return "classes must be a list of names"
    if not isinstance(spec, dict):
        return "no input"
    shape, scale = spec.get("shape"), spec.get("scale")
    if shape != [None, *SHAPE]:  # what preprocessing makes (digitpi.contract): no other input can be served
        return f"input shape must be [null, {', '.join(map(str, SHAPE))}], got {shape!r}"
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0):
        return f"input scale must be a positive number, got {scale!r}"
    if not (isinstance(files, dict) and files and all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                                      and len(e["sha256"]) == 64 for e in files.values())):
        return "files must list a SHA-256 for each file"
    if "members" in card:
        return members_problem(card)
    return layers_problem(card.get("layers"))


def layers_problem(layers) -> str | None:
    if not isinstance(layers, list) or not layers:
        return "no layer list"
    return next((p for i, layer in enumerate(layers) if (p := layer_problem(i, layer))), None)


def members_problem(card: dict) -> str | None:
    """An ensemble's card: members, each with a model name and a layer list, in place of one layer list."""
    members = card["members"]
    if "layers" in card:
        return "both a layer list and members"
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) for m in members):
        return "members must be a list of at least two models"
    for i, member in enumerate(members):
        problem = None if is_name(member.get("model")) else "no model name"
        problem = problem or layers_problem(member.get("layers"))
        if problem:
            return f"member {i}: {problem}"
    return None


def model_layers(card: dict) -> list[list[dict]]:
    """The layer list of each model whose weights the export holds, for the NumPy backend: the card's
    own for one model, one per member for an ensemble (whose outputs it averages)."""
    return [member["layers"] for member in card["members"]] if "members" in card else [card["layers"]]
