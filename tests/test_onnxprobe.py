"""The runtime survives an onnxruntime that kills Python at import, and says so in one line.

On a Raspberry Pi 4, onnxruntime 1.21.0 dies with SIGILL at `import` (pi/test_arm.py meets the real
one, emulated as a Cortex-A72). Here, on the PC, an `onnxruntime` package that sends itself SIGILL
when imported stands first on PYTHONPATH: a real signal, a real fork, the real runtime and command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

KILLER = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"


@pytest.fixture(scope="module")
def picture(mnist_test, tmp_path_factory):
    images, labels = mnist_test
    path = tmp_path_factory.mktemp("picture") / "seven.png"
    Image.fromarray(255 - images[0]).resize((280, 280)).save(path)  # dark ink on white paper
    return path, int(labels[0])


def predict(env_extra: dict, model, picture_path, *flags) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "digitpi", "predict", "--model", str(model), "--json", *flags,
                           str(picture_path)], capture_output=True, text=True, timeout=300, env=env)


def test_onnxruntime_killed_at_import_falls_back_to_numpy_once_probed(fast_export, picture, tmp_path):
    killer = tmp_path / "site" / "onnxruntime"
    killer.mkdir(parents=True)
    (killer / "__init__.py").write_text(KILLER)
    env = {"PYTHONPATH": str(tmp_path / "site"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert subprocess.run([sys.executable, "-c", "import onnxruntime"], env={**os.environ, **env}).returncode == -4

    path, label = picture
    for attempt in ("probed", "remembered"):
        done = predict(env, fast_export, path)
        assert done.returncode == 0, (attempt, done.stderr)
        assert json.loads(done.stdout)[0]["digit"] == label
        warning = done.stderr.splitlines()
        assert len(warning) == 1, (attempt, done.stderr)
        assert "SIGILL" in warning[0] and "NumPy backend" in warning[0]
    [answer] = json.loads((tmp_path / "cache" / "digitpi" / "onnxruntime-probe.json").read_text()).values()
    assert answer["works"] is False and "SIGILL" in answer["reason"]


def test_explicit_onnxruntime_that_cannot_run_is_one_line_error(fast_export, tmp_path):
    killer = tmp_path / "site" / "onnxruntime"
    killer.mkdir(parents=True)
    (killer / "__init__.py").write_text(KILLER)
    code = ("import sys\nfrom digitpi import UserError\nfrom digitpi.runtime import Classifier\n"
            f"try:\n    Classifier.load({str(fast_export)!r}, backend='onnxruntime')\n"
            "except UserError as e:\n    print(e)\n    sys.exit(2)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "SIGILL" in done.stdout and "--backend numpy" in done.stdout, done


def test_working_onnxruntime_is_used_and_remembered(fast_export, mnist_test, tmp_path, monkeypatch):
    from digitpi import onnxprobe
    from digitpi.runtime import Classifier

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(onnxprobe, "_answers", {})  # what earlier tests in this process asked is forgotten
    images, labels = mnist_test
    classifier = Classifier.load(fast_export)
    assert classifier.backend_name == "onnxruntime"
    assert (classifier.predict(images[:1000]).labels == labels[:1000]).mean() > 0.98
    [answer] = json.loads(onnxprobe.cache_path().read_text()).values()
    assert answer == {**answer, "works": True, "reason": ""}


def test_cpu_features_come_from_the_auxiliary_vector():
    from digitpi import onnxprobe

    features = onnxprobe.cpu_features()
    assert features.startswith("hwcap=")
    assert int(features.split(",")[0].removeprefix("hwcap="), 16) > 0  # x86 Linux sets AT_HWCAP too
