"""Fuzzing: random and crafted files thrown at every door a user's file comes through.

`digitpi predict`, `POST /predict` on a real server, the model loader (`Classifier.load`), the run
loader (`rundir.load_checkpoint`) and `import-keras` each get random bytes, real files cut short or
with bytes overwritten, and well-formed files with hostile contents (huge declared sizes, fields of
the wrong type or missing). Each must answer, or fail with one line: exit 2 / a `UserError` / a JSON
4xx, never a traceback, never a 500.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from digitpi import UserError, card
from digitpi.cli import main

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"]


def encoded(mode: str, width: int, height: int, fmt: str, seed: int) -> bytes:
    """A picture of random strokes in `mode`, saved as `fmt` (or as PNG where `fmt` cannot hold `mode`)."""
    rng = np.random.default_rng(seed)
    levels = np.full((height, width), rng.integers(0, 256), np.uint8)
    for _ in range(3):
        r, c = rng.integers(0, height), rng.integers(0, width)
        levels[r:r + 1 + height // 3, c:c + 1 + width // 8] = rng.integers(0, 256)
    image = Image.fromarray(levels, "L")
    if mode == "F":
        image = Image.fromarray(levels.astype(np.float32) * rng.uniform(-1e4, 1e4), "F")
    elif mode in ("I", "I;16"):
        image = Image.fromarray(levels.astype(np.uint16) * 257).convert(mode)
    else:
        image = image.convert(mode)
    for kind in (fmt, "PNG", "TIFF"):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format=kind)
            return buffer.getvalue()
        except (OSError, ValueError, KeyError):
            continue
    raise AssertionError(f"no format holds mode {mode}")


def png_header(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    """A PNG whose header claims any size, depth and colour type, with `idat` as its (maybe empty) data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b""))


@st.composite
def picture_files(draw) -> bytes:
    """Random bytes; a real picture, whole, cut short or overwritten; or a PNG header claiming a size."""
    kind = draw(st.sampled_from(["bytes", "picture", "cut", "overwritten", "claims"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000))
    if kind == "claims":
        side = st.integers(1, 65535)
        return png_header(draw(side), draw(side), draw(st.sampled_from([1, 2, 4, 8, 16])),
                          draw(st.sampled_from([0, 2, 3, 4, 6, 7])), draw(st.binary(max_size=200)))
    data = encoded(draw(st.sampled_from(MODES)), draw(st.integers(1, 300)), draw(st.integers(1, 300)),
                   draw(st.sampled_from(FORMATS)), draw(st.integers(0, 2**32 - 1)))
    if kind == "cut":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "overwritten":
        at = draw(st.integers(0, len(data)))
        patch = draw(st.binary(min_size=1, max_size=64))
        return data[:at] + patch + data[at + len(patch):]
    return data


# ---------------------------------------------------------------- digitpi predict


@FUZZ
@given(payload=picture_files(), multi=st.booleans(), as_json=st.booleans())
def test_predict_answers_or_says_why_in_one_line(payload, multi, as_json, fast_export, tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("fuzz") / "picture"
    path.write_bytes(payload)
    flags = [*(["--multi"] if multi else []), *(["--json"] if as_json else [])]
    capsys.readouterr()  # an earlier example that failed left its output: each example sees only its own
    with warnings.catch_warnings(record=True) as printed:  # a warning would be a second line on stderr
        warnings.simplefilter("always")
        code = main(["predict", "--model", str(fast_export), str(path), *flags])
    captured = capsys.readouterr()
    assert not printed, [str(w.message) for w in printed]
    assert code in (0, 2)
    if as_json:  # a reading, or the error in the record
        (record,) = json.loads(captured.out)
        assert captured.err == "" and record["image"] == str(path) and ("error" in record) == (code == 2)
        assert code == 0 or (record["error"] and "\n" not in record["error"])
    elif code == 0:
        assert captured.out.startswith(f"{path}: ") and captured.err == ""
    else:
        assert captured.out == "" and captured.err.startswith(f"digitpi: error: {path}: ")
        assert captured.err.count("\n") == 1


# ---------------------------------------------------------------- POST /predict


@pytest.fixture(scope="module")
def client(fast_export):
    from digitpi.bench.server import launch

    with launch(fast_export) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@FUZZ
@given(payload=picture_files(), multi=st.booleans(),
       content_type=st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "image/x-anything"]))
def test_post_predict_answers_or_says_why_in_json(payload, multi, content_type, client):
    r = client.post("/predict" + ("?multi=1" if multi else ""), content=payload, headers={"Content-Type": content_type})
    assert r.status_code in (200, 400, 413, 415, 422), r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert ("text" in body if multi else "digit" in body) if r.status_code == 200 else list(body) == ["error"]


# ---------------------------------------------------------------- the model loader


def json_values():
    return st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                    max_size=4), max_leaves=8)


def paths_of(tree, prefix=()) -> list[tuple]:
    """Every path to a value inside a JSON tree."""
    found = [prefix] if prefix else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        found += paths_of(value, (*prefix, key))
    return found


def mutated(tree, draw):
    """`tree` with one value somewhere replaced by a random one, or removed."""
    tree = copy.deepcopy(tree)
    path = draw(st.sampled_from(paths_of(tree)))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        parent[path[-1]] = draw(json_values())
    elif isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    return tree


@pytest.fixture(scope="module")
def export_copy(fast_export, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-export") / "export"
    shutil.copytree(fast_export, folder)
    return folder


@FUZZ
@given(data=st.data(), backend=st.sampled_from(["onnxruntime", "numpy"]), damage_file=st.booleans())
def test_model_loader_refuses_broken_exports_in_one_line(data, backend, damage_file, export_copy, fast_export):
    """Cards with any field changed or removed (sealed again, as a buggy exporter would write them), and
    files with bytes overwritten whose SHA-256 the card then vouches for."""
    from digitpi.runtime import Classifier, sha256_file

    original = json.loads((fast_export / "model.json").read_text())
    content = mutated(original, data.draw) if not damage_file else copy.deepcopy(original)
    name = "weights.npz" if backend == "numpy" else "model.int8.onnx"
    raw = (fast_export / name).read_bytes()
    if damage_file:
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=32)) + raw[at + 32:]
        content["files"][name]["sha256"] = hashlib.sha256(raw).hexdigest()
    (export_copy / name).write_bytes(raw)
    (export_copy / "model.json").write_text(json.dumps(card.seal(content)))
    try:
        classifier = Classifier.load(export_copy, backend=backend)
    except UserError as e:
        assert "\n" not in str(e) and str(e)
        return
    finally:
        (export_copy / name).write_bytes((fast_export / name).read_bytes())
    assert sha256_file(export_copy / name) == original["files"][name]["sha256"]
    assert classifier.predict(np.zeros((2, 28, 28), np.uint8)).probabilities.shape == (2, len(classifier.classes))


# ---------------------------------------------------------------- the run loader


@FUZZ
@given(data=st.data())
def test_checkpoint_loader_refuses_damaged_weights_in_one_line(data, fast_run, tmp_path_factory):
    from digitpi import rundir

    run = tmp_path_factory.mktemp("fuzz-run")
    shutil.copy(fast_run / "config.json", run / "config.json")
    raw = (fast_run / "model.safetensors").read_bytes()
    kind = data.draw(st.sampled_from(["cut", "overwritten", "bytes"]))
    if kind == "cut":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "overwritten":
        at = data.draw(st.integers(0, len(raw) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=16).filter(lambda p: p != raw[at:at + len(p)]))
        raw = raw[:at] + patch + raw[at + len(patch):]
    else:
        raw = data.draw(st.binary(max_size=2000))
    (run / "model.safetensors").write_bytes(raw)
    try:
        model, _ = rundir.load_checkpoint(run)
    except UserError as e:  # a header that no longer parses or fits, or tensors that fail their checksum
        assert "\n" not in str(e)
        return
    original, _ = rundir.load_checkpoint(fast_run)  # loaded anyway: only the header's padding changed
    for (key, value), expected in zip(model.state_dict().items(), original.state_dict().values()):
        assert torch.equal(value, expected), key


# ---------------------------------------------------------------- import-keras


def keras_file(path: Path, config: dict, weights: dict[str, list[tuple[str, np.ndarray]]]) -> Path:
    """A legacy Keras .h5 as `model.save` lays it out: model_config, and model_weights/<layer>/<names>."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "3.0.0"
        group = f.create_group("model_weights")
        for layer, arrays in weights.items():
            g = group.create_group(layer)
            g.attrs["weight_names"] = [name for name, _ in arrays]
            for name, array in arrays:
                g[name] = array
    return path


SMALL_CNN = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
    {"class_name": "InputLayer", "config": {"batch_shape": [None, 28, 28, 1], "name": "input"}},
    {"class_name": "Conv2D", "config": {"name": "conv", "filters": 2, "kernel_size": [3, 3], "strides": [1, 1],
                                        "padding": "valid", "activation": "relu", "use_bias": True}},
    {"class_name": "MaxPooling2D", "config": {"name": "pool", "pool_size": [2, 2], "padding": "valid"}},
    {"class_name": "Flatten", "config": {"name": "flat"}},
    {"class_name": "Dense", "config": {"name": "dense", "units": 10, "activation": "softmax", "use_bias": True}},
]}}


def small_cnn_weights(rng: np.random.Generator) -> dict:
    return {"conv": [("conv/kernel", rng.normal(size=(3, 3, 1, 2)).astype(np.float32)),
                     ("conv/bias", np.zeros(2, np.float32))],
            "dense": [("dense/kernel", rng.normal(size=(13 * 13 * 2, 10)).astype(np.float32)),
                      ("dense/bias", np.zeros(10, np.float32))]}


def test_the_crafted_keras_file_is_a_real_model(tmp_path):
    """The fuzzer's starting point converts: what breaks below is the mutation, not the file."""
    from digitpi.keras_import import import_keras

    imported = import_keras(keras_file(tmp_path / "m.h5", SMALL_CNN, small_cnn_weights(np.random.default_rng(0))))
    assert imported.input_shape == (28, 28, 1) and len(imported.model) == 5


@FUZZ
@given(data=st.data(), mutate_weights=st.booleans())
def test_import_keras_refuses_crafted_files_in_one_line(data, mutate_weights, tmp_path_factory):
    from digitpi.keras_import import KerasImportError, import_keras

    weights = small_cnn_weights(np.random.default_rng(0))
    config = SMALL_CNN
    if mutate_weights:  # arrays of other shapes, or NaN
        layer = data.draw(st.sampled_from(sorted(weights)))
        name, array = weights[layer][0]
        shape = tuple(data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=4)))
        weights[layer][0] = (name, np.full(shape, data.draw(st.sampled_from([0.5, np.nan, np.inf])), np.float32))
    else:
        config = mutated(SMALL_CNN, data.draw)
    path = keras_file(tmp_path_factory.mktemp("fuzz-keras") / "m.h5", config, weights)
    try:
        imported = import_keras(path)
    except KerasImportError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))
        return
    assert len(imported.model) >= 1
