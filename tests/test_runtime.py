"""Runtime tests: the Pi side loads only verified files, reads real digits and never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from digitpi import UserError
from digitpi.runtime import Classifier, ModelFileError


@pytest.fixture(scope="module")
def classifier(fast_export) -> Classifier:
    return Classifier.load(fast_export)


def test_predicts_real_digits_from_uint8_and_float(classifier, mnist_test):
    images, labels = mnist_test
    labels_u8, probabilities = classifier.predict(images)  # unpacks like a (labels, probabilities) pair
    assert classifier.precision == "int8" and classifier.backend_name == "onnxruntime"
    assert probabilities.shape == (10_000, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (labels_u8 == labels).mean() >= 0.99
    from_float = classifier.predict(images[:500].astype(np.float32) / 255)
    np.testing.assert_array_equal(from_float.labels, labels_u8[:500])


def test_one_image_gives_a_batch_of_one(classifier, mnist_test):
    images, labels = mnist_test
    one = classifier.predict(images[0])
    assert one.labels.shape == (1,) and one.probabilities.shape == (1, 10)
    assert one.labels[0] == labels[0]


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 32, 32), np.uint8), "shape"),
    (np.full((2, 28, 28), 255.0, np.float32), r"\[0, 1\]"),
    (np.zeros((0, 28, 28), np.uint8), "no images"),
    (np.zeros((28, 28), bool), "dtype"),
])
def test_bad_input_is_a_user_error(classifier, bad, message):
    with pytest.raises(UserError, match=message):
        classifier.predict(bad)


def copy_of(fast_export, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(fast_export, folder)
    return folder


@pytest.mark.parametrize("name, precision, backend", [
    ("model.int8.onnx", "int8", "onnxruntime"),
    ("model.onnx", "fp32", "onnxruntime"),
    ("weights.npz", "fp32", "numpy"),
])
def test_tampered_file_is_refused(fast_export, tmp_path, name, precision, backend):
    folder = copy_of(fast_export, tmp_path)
    raw = bytearray((folder / name).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit, e.g. a weight changed on purpose or by a bad copy
    (folder / name).write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="does not match the SHA-256") as info:
        Classifier.load(folder, precision=precision, backend=backend)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_files_and_cards_are_refused(fast_export, tmp_path):
    folder = copy_of(fast_export, tmp_path)
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(ModelFileError, match="model.int8.onnx is missing"):
        Classifier.load(folder)
    Classifier.load(folder, precision="fp32")  # the file that runs is what is checked
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable model card"):
        Classifier.load(folder, precision="fp32")
    (folder / "model.json").unlink()
    with pytest.raises(ModelFileError, match="digitpi export"):
        Classifier.load(folder, precision="fp32")
    with pytest.raises(ModelFileError, match="no export folder"):
        Classifier.load(tmp_path / "nowhere")


def test_options_are_checked(fast_export):
    with pytest.raises(UserError, match="precision"):
        Classifier.load(fast_export, precision="fp16")
    with pytest.raises(UserError, match="backend"):
        Classifier.load(fast_export, backend="tensorflow")


def test_card_is_exposed(classifier, fast_export):
    assert classifier.card == json.loads((fast_export / "model.json").read_text())
    assert classifier.classes == [str(d) for d in range(10)]


PI_SCRIPT = """
import sys
{block}
import numpy as np
from digitpi.runtime import Classifier
images = np.load(sys.argv[2], allow_pickle=False)
labels = np.load(sys.argv[3], allow_pickle=False)
for precision, backend in {variants}:
    c = Classifier.load(sys.argv[1], precision=precision, backend=backend)
    accuracy = (c.predict(images).labels == labels).mean()
    print(c.backend_name, c.precision, accuracy)
    assert accuracy > 0.98, accuracy
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "safetensors", "matplotlib"))
assert not heavy, heavy
"""


@pytest.mark.parametrize("block, variants, backends", [
    ("", [("int8", "auto"), ("fp32", "onnxruntime"), ("fp32", "numpy")], {"onnxruntime", "numpy"}),
    # a Pi without onnxruntime: `auto` falls back to NumPy
    ("sys.modules['onnxruntime'] = None", [("int8", "auto")], {"numpy"}),
])
def test_runtime_never_imports_torch(fast_export, mnist_test, tmp_path, block, variants, backends):
    images, labels = mnist_test
    np.save(tmp_path / "images.npy", images[:300])
    np.save(tmp_path / "labels.npy", labels[:300])
    script = PI_SCRIPT.format(block=block, variants=variants)
    done = subprocess.run([sys.executable, "-c", script, str(fast_export), str(tmp_path / "images.npy"),
                           str(tmp_path / "labels.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {line.split()[0] for line in done.stdout.splitlines()} == backends
