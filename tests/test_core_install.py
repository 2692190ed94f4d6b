"""The core install (`pip install digitpi`, no extras) is all a Raspberry Pi needs to read digits.

Runs in a separate virtual environment holding only the core dependencies (numpy, Pillow,
onnxruntime); .ci/run and the Makefile build it and name its python in DIGITPI_CORE_PYTHON.
By hand: python3 -m venv /tmp/corevenv && /tmp/corevenv/bin/pip install . &&
DIGITPI_CORE_PYTHON=/tmp/corevenv/bin/python pytest tests/test_core_install.py
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

ENV = "DIGITPI_CORE_PYTHON"

SCRIPT = """
import importlib.util, sys
import numpy as np
import digitpi.runtime
from digitpi.runtime import Classifier

missing = [m for m in ("torch", "safetensors", "onnx", "matplotlib") if importlib.util.find_spec(m) is not None]
assert not missing, f"the core install holds training packages: {missing}"
images = np.load(sys.argv[2], allow_pickle=False)
labels = np.load(sys.argv[3], allow_pickle=False)
for precision, backend in (("int8", "auto"), ("fp32", "onnxruntime"), ("fp32", "numpy")):
    c = Classifier.load(sys.argv[1], precision=precision, backend=backend)
    predicted = c.predict(images).labels
    np.save(f"{sys.argv[4]}/{backend}-{precision}.npy", predicted)
    print(c.backend_name, c.precision, (predicted == labels).mean())
print(digitpi.runtime.__file__)
"""


@pytest.fixture(scope="session")  # session scope: checked before the session fixtures train a model
def core_python() -> str:
    if not os.environ.get(ENV):
        pytest.fail(f"{ENV} is not set: point it at the python of a venv with only `pip install .` "
                    "(python3 -m venv /tmp/corevenv && /tmp/corevenv/bin/pip install .)")
    python = os.path.abspath(os.environ[ENV])  # the tests run it from other folders
    if not os.access(python, os.X_OK):
        pytest.fail(f"{ENV}={python} is not an executable python")
    return python


def test_core_install_reads_real_digits_without_torch(core_python, exported_dir, mnist_test, tmp_path):
    from digitpi.runtime import Classifier

    images, labels = mnist_test
    images, labels = images[:1000], labels[:1000]
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    done = subprocess.run([core_python, "-c", SCRIPT, str(exported_dir), str(tmp_path / "images.npy"),
                           str(tmp_path / "labels.npy"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    *results, module_file = done.stdout.splitlines()
    assert "site-packages" in module_file  # the installed copy ran, not this checkout's source
    for line in results:
        backend, precision, accuracy = line.split()
        assert float(accuracy) > 0.98, line
    for backend, precision in (("onnxruntime", "int8"), ("onnxruntime", "fp32"), ("numpy", "fp32")):
        here = Classifier.load(exported_dir, precision=precision, backend=backend).predict(images).labels
        there = np.load(tmp_path / f"{'auto' if precision == 'int8' else backend}-{precision}.npy")
        np.testing.assert_array_equal(there, here)  # the Pi answers exactly as the PC


def test_core_install_runs_the_digitpi_command(core_python, exported_dir, mnist_test, tmp_path):
    """`digitpi predict` itself starts and reads a picture on the Pi: building the CLI needs no torch."""
    from PIL import Image

    from digitpi import preprocess
    from digitpi.runtime import Classifier

    images, _ = mnist_test
    picture = tmp_path / "digit.png"
    Image.fromarray(255 - images[0]).resize((280, 280)).save(picture)  # dark ink on white paper
    digitpi = os.path.join(os.path.dirname(core_python), "digitpi")
    done = subprocess.run([digitpi, "predict", "--model", str(exported_dir), "--json", str(picture)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [reading] = json.loads(done.stdout)
    expected = Classifier.load(exported_dir).predict(preprocess.to_mnist(picture)).labels[0]
    assert reading["digit"] == expected
