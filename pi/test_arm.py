"""The Pi side proven on the Pi's architectures, emulated: Debian bookworm arm64 and armhf under qemu-user.

arm64 (64-bit Raspberry Pi OS), as a Pi 4 (Cortex-A72) and a Pi 3 (Cortex-A53): the digitpi wheel with
the aarch64 wheels of numpy, Pillow and onnxruntime; the full test set through onnxruntime fp32 and int8
and the NumPy backend at the accuracy measured on x86, `digitpi predict` on picture files with x86's
answers, no torch; and an onnxruntime that dies at import (1.21.0) met by the runtime's probe.

armhf (32-bit Raspberry Pi OS), as a Pi 2 (Cortex-A7): Debian's numpy and Pillow, the wheel installed by
pip in a venv as the README says, which must not ask for onnxruntime; the NumPy backend chosen by itself.

The full-test-set runs take minutes of emulation each: the `full_test_set` fixture (at the end) starts
those of the selected tests all at once, and each test checks its own.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import userland

# The wheels a 64-bit Pi gets from PyPI, pinned (the cache is keyed by them): onnxruntime is the newest
# release, which runs on the Pi 4's and Pi 3's cores; numpy and Pillow the newest for Python 3.11.
ARM64_REQUIREMENTS = ("numpy==2.4.6", "Pillow==13.0.0", "onnxruntime==1.32.0")
# The onnxruntime that kills Python with SIGILL at import on a Pi 4 / Pi 3 (onnxruntime issues 23957, 24112).
CRASHING_ONNXRUNTIME = "onnxruntime==1.21.0"
ARM64_VARIANTS = ("onnxruntime:fp32", "auto:int8", "numpy:fp32")  # backend:precision, as armcheck.py reads them
ACCURACY_POINTS = 0.05  # the ARM accuracy must be within this many percentage points of x86's
HERE = Path(__file__).resolve().parent


def x86_answers(model: Path, pictures: list[Path], backend: str, precision: str) -> list[int]:
    """The digits this PC's runtime reads in `pictures`: what the Pi must answer too."""
    from digitpi import preprocess
    from digitpi.runtime import Classifier

    classifier = Classifier.load(model, precision=precision, backend=backend)
    return [int(d) for d in classifier.predict(np.stack([preprocess.to_mnist(p) for p in pictures])).labels]


def predict_pages(arch: str, root: Path, core: str, digitpi: list[str], model: Path, pages: list[Path], env: dict,
                  python: Path | None = None) -> tuple[list[tuple[str, list]], str]:
    """`digitpi predict --multi --precision fp32` on the emulated Pi: each page's text and its digits'
    boxes (fp32: the model's sureness chooses where touching digits are cut, and int8 kernels vary by CPU)."""
    answers, stderr = predict_json(arch, root, core, digitpi, model, pages, env, ("--multi", "--precision", "fp32"),
                                   python)
    return [(page["text"], [d["box"] for line in page["lines"] for d in line["digits"]]) for page in answers], stderr


def x86_pages(model: Path, pages: list[Path], backend: str, precision: str) -> list[tuple[str, list]]:
    """What this PC reads on `pages`: the page layout (numpy and Pillow) must find the same digits there."""
    from digitpi import reading
    from digitpi.runtime import Classifier

    classifier = Classifier.load(model, precision=precision, backend=backend)
    return [(page.text, [list(d.box) for d in page.digits])
            for page in (reading.read(classifier, p, page=True) for p in pages)]


def same_pages(there: list[tuple[str, list]], here: list[tuple[str, list]]) -> bool:
    """The same text, and every box within a pixel (Pillow's bicubic turn may round otherwise on ARM)."""
    return len(there) == len(here) and all(
        text == x86_text and len(boxes) == len(x86_boxes)
        and np.abs(np.subtract(boxes, x86_boxes)).max(initial=0) <= 1
        for (text, boxes), (x86_text, x86_boxes) in zip(there, here))


def check_full_test_set(results: list, arch: str, core: str, report: dict, model: Path, card: dict, test_set,
                        out: Path) -> None:
    """Every variant's accuracy within ACCURACY_POINTS of the card's x86 number; rows for the summary."""
    from digitpi.runtime import Classifier

    _, _, images, _ = test_set
    assert report["machine"] == userland.ARCHES[arch].machine
    assert not report["torch_installed"] and not report["torch_imported"]
    for run in report["runs"]:
        x86 = card["test_accuracy"]["numpy" if run["backend"] == "numpy" else run["precision"]]
        here = Classifier.load(model, precision=run["precision"], backend=run["backend"]).predict(images).labels
        there = np.load(out / f"{run['variant'].replace(':', '-')}.npy")
        results.append({"arch": arch, "core": core, "variant": run["variant"],
                        "runs_as": f"{run['backend']} {run['precision']}", "accuracy": run["accuracy"], "x86": x86,
                        "differ": int((here != there).sum())})
        assert abs(run["accuracy"] - x86) * 100 <= ACCURACY_POINTS, run
        assert run["images"] == len(images)


def predict_json(arch: str, root: Path, core: str, digitpi: list[str], model: Path, pictures: list[Path],
                 env: dict, extra: tuple[str, ...] = (), python: Path | None = None) -> tuple[list[dict], str]:
    """`digitpi predict --json` on the emulated Pi: its answers, one per picture, and what it said on stderr."""
    done = userland.run(arch, root, core, [*digitpi, "predict", "--model", str(model), "--json", *extra,
                                           *map(str, pictures)], env=env, python=python)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def digits_read(answers: list[dict]) -> list[int]:
    return [answer["digit"] for answer in answers]


# ---------------------------------------------------------------- 64-bit Raspberry Pi OS


@pytest.fixture(scope="session")
def arm64(emulators):
    return userland.userland("arm64")


@pytest.fixture(scope="session")
def arm64_site(wheel, tmp_path_factory) -> Path:
    """The wheel and its dependencies as pip resolves them for aarch64, from the pinned wheels only."""
    wheels = userland.wheelhouse("aarch64", ARM64_REQUIREMENTS)
    site = tmp_path_factory.mktemp("arm64-site")
    userland.install_target("aarch64", wheels, site, [str(wheel), *ARM64_REQUIREMENTS])
    return site


@pytest.mark.parametrize("core", userland.ARCHES["arm64"].cores)
def test_arm64_full_test_set(full_test_set, core, model, card, test_set, results):
    run, out = full_test_set[core]
    done = run.result()
    assert done.returncode == 0, done.stderr
    assert "NumPy backend" not in done.stderr  # auto took onnxruntime: no fallback warning
    report = json.loads(done.stdout)
    assert report["onnxruntime"] == ARM64_REQUIREMENTS[2].split("==")[1]
    assert [r["backend"] for r in report["runs"]] == ["onnxruntime", "onnxruntime", "numpy"]
    check_full_test_set(results, "arm64", core, report, model, card, test_set, out)


@pytest.mark.parametrize("core", userland.ARCHES["arm64"].cores)
def test_arm64_predict_reads_pictures_as_x86(arm64, arm64_site, core, model, pictures, tmp_path):
    env = {"PYTHONPATH": str(arm64_site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    digitpi = [str(arm64_site / "bin" / "digitpi")]  # the console script pip wrote, run by the emulated python
    for precision in ("int8", "fp32"):
        answers, stderr = predict_json("arm64", arm64[core], core, digitpi, model, pictures, env,
                                       ("--precision", precision))
        assert digits_read(answers) == x86_answers(model, pictures, "onnxruntime", precision), stderr


def test_arm64_reads_pages_as_x86(arm64, arm64_site, model, pages, tmp_path):
    core = "cortex-a72"
    env = {"PYTHONPATH": str(arm64_site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    read, stderr = predict_pages("arm64", arm64[core], core, [str(arm64_site / "bin" / "digitpi")], model, pages, env)
    assert same_pages(read, x86_pages(model, pages, "onnxruntime", "fp32")), (read, stderr)


@pytest.fixture(scope="session")
def crashing_onnxruntime(arm64_site, tmp_path_factory) -> Path:
    """onnxruntime 1.21.0 alone, to be put before the good one on PYTHONPATH."""
    wheels = userland.wheelhouse("aarch64", (CRASHING_ONNXRUNTIME,))
    target = tmp_path_factory.mktemp("onnxruntime-1.21.0")
    userland.install_target("aarch64", wheels, target, [CRASHING_ONNXRUNTIME], deps=False)
    return target


def test_arm64_survives_onnxruntime_killed_at_import(arm64, arm64_site, crashing_onnxruntime, model, pictures,
                                                     tmp_path):
    """1.21.0 dies with SIGILL at `import` on a Pi 4's core: digitpi reads with NumPy and says so in one line,
    remembers the answer, and still uses that onnxruntime on a core where it works (qemu's `max`)."""
    core = "cortex-a72"
    site = f"{crashing_onnxruntime}{os.pathsep}{arm64_site}"
    env = {"PYTHONPATH": site, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    crash = userland.run("arm64", arm64[core], core, ["-c", "import onnxruntime"], env=env)
    assert crash.returncode == -4 or "Illegal instruction" in crash.stderr, (crash.returncode, crash.stderr)

    digitpi = [str(arm64_site / "bin" / "digitpi")]
    expected = x86_answers(model, pictures, "numpy", "fp32")
    for attempt in ("probed", "remembered"):
        answers, stderr = predict_json("arm64", arm64[core], core, digitpi, model, pictures, env)
        warning = [line for line in stderr.splitlines() if line.strip()]
        assert len(warning) == 1 and "SIGILL" in warning[0] and "NumPy backend" in warning[0], (attempt, stderr)
        assert digits_read(answers) == expected, attempt
    [answer] = json.loads((tmp_path / "cache" / "digitpi" / "onnxruntime-probe.json").read_text()).values()
    assert answer["works"] is False and "SIGILL" in answer["reason"]

    bad = userland.run("arm64", arm64[core], core, [*digitpi, "predict", "--model", str(model), "--precision",
                                                    "fp32", str(pictures[0])], env={**env, "QEMU_CPU": "max"})
    assert bad.returncode == 0 and bad.stderr.strip() == "", bad.stderr  # other CPU bits: asked again, and it works


# ---------------------------------------------------------------- 32-bit Raspberry Pi OS


@pytest.fixture(scope="session")
def armhf(emulators):
    return userland.userland("armhf")


@pytest.fixture(scope="session")
def armhf_venv(armhf, wheel, tmp_path_factory) -> tuple[Path, str]:
    """The README's 32-bit install, emulated: a venv over Debian's numpy and Pillow, then pip installs the wheel.

    pip gets no index, only the folder of the wheel: had the wheel asked for onnxruntime, which has no
    armv7l wheel anywhere, the install would fail here. (The venv is made without pip and uses Debian's
    python3-pip: venv's ensurepip starts a second interpreter, which qemu-user without binfmt cannot.)
    """
    core = "cortex-a7"
    venv = tmp_path_factory.mktemp("armhf") / "digitpi"
    made = userland.run("armhf", armhf[core], core, ["-m", "venv", "--system-site-packages", "--without-pip",
                                                     str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python3"
    install = userland.run("armhf", armhf[core], core, ["-m", "pip", "install", "--no-index", "--find-links",
                                                        str(wheel.parent), "digitpi"], python=python)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "onnxruntime" not in install.stdout + install.stderr
    return python, install.stdout


def test_armhf_install_leaves_out_onnxruntime(armhf, armhf_venv):
    python, pip_output = armhf_venv
    assert "Successfully installed digitpi" in pip_output
    core = "cortex-a7"
    show = ("import importlib.metadata as m, importlib.util as u; "
            "print(m.version('numpy'), m.version('Pillow'), u.find_spec('onnxruntime'), u.find_spec('torch'))")
    done = userland.run("armhf", armhf[core], core, ["-c", show], python=python)
    assert done.returncode == 0, done.stderr
    numpy_version, pillow_version, onnxruntime, torch = done.stdout.split()
    assert numpy_version.startswith("1.24") and pillow_version.startswith("9.4")  # Debian bookworm's own
    assert onnxruntime == "None" and torch == "None"


@pytest.mark.parametrize("core", userland.ARCHES["armhf"].cores)
def test_armhf_full_test_set(full_test_set, core, model, card, test_set, results):
    run, out = full_test_set[core]
    done = run.result()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["onnxruntime"] is None
    assert [(r["backend"], r["precision"]) for r in report["runs"]] == [("numpy", "fp32")]  # chosen by itself
    warning = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and "onnxruntime is not installed" in warning[0] and "NumPy" in warning[0], done.stderr
    check_full_test_set(results, "armhf", core, report, model, card, test_set, out)


def test_armhf_predict_reads_pictures_as_x86(armhf, armhf_venv, model, pictures, tmp_path):
    python, _ = armhf_venv
    core = "cortex-a7"
    digitpi = [str(python.with_name("digitpi"))]
    answers, stderr = predict_json("armhf", armhf[core], core, digitpi, model, pictures,
                                   {"XDG_CACHE_HOME": str(tmp_path / "cache")}, python=python)
    assert digits_read(answers) == x86_answers(model, pictures, "numpy", "fp32"), stderr
    assert "onnxruntime is not installed" in stderr  # the runtime says which backend reads


def test_armhf_reads_pages_as_x86(armhf, armhf_venv, model, pages, tmp_path):
    python, _ = armhf_venv
    core = "cortex-a7"
    read, stderr = predict_pages("armhf", armhf[core], core, [str(python.with_name("digitpi"))], model, pages,
                                 {"XDG_CACHE_HOME": str(tmp_path / "cache")}, python=python)
    assert same_pages(read, x86_pages(model, pages, "numpy", "fp32")), (read, stderr)


# ---------------------------------------------------------------- the full test set on every core at once


@pytest.fixture(scope="session")
def full_test_set(request, model, test_set, tmp_path_factory):
    """armcheck.py over the whole test set on every emulated core a selected test checks (`-k a53`: one),
    all started here: {core: (its run's Future, its output folder)}. One emulator keeps one CPU core busy
    for minutes, so the runs share the PC's cores side by side instead of waiting for each other."""
    images, labels, _, _ = test_set
    cores = {item.callspec.params["core"] for item in request.session.items if "full_test_set" in item.fixturenames}
    jobs = {}
    for arch, variants in (("arm64", ARM64_VARIANTS), ("armhf", ("auto:int8",))):
        if chosen := cores & set(userland.ARCHES[arch].cores):  # only then is its userland made
            roots = request.getfixturevalue(arch)
            python, env = ((None, {"PYTHONPATH": str(request.getfixturevalue("arm64_site"))}) if arch == "arm64"
                           else (request.getfixturevalue("armhf_venv")[0], {}))
            jobs |= {core: (arch, roots[core], python, env, variants) for core in sorted(chosen)}
    with ThreadPoolExecutor(len(jobs)) as pool:  # leaving it waits for every run, so none outlives the session
        runs = {}
        for core, (arch, root, python, env, variants) in jobs.items():
            out = tmp_path_factory.mktemp(core)
            argv = [str(HERE / "armcheck.py"), str(model), str(images), str(labels), str(out), *variants]
            env = {**env, "XDG_CACHE_HOME": str(out / "cache")}
            runs[core] = (pool.submit(userland.run, arch, root, core, argv, env=env, python=python), out)
        yield runs
