"""Fixtures of `make pi-test`: an exported model, the built wheel, the test set and pictures, on the PC side.

The emulated side is in userland.py. What the PC answers is the reference: the accuracy the export
recorded on x86 (model.json -> test_accuracy) and the x86 runtime's labels for the same inputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WILD_PICTURES = 6  # real handwriting from ../shared/wild-dev, read in place when it is there
RESULTS = pytest.StashKey[list]()  # one row per (architecture, core, variant): printed at the end of the run


@pytest.fixture(scope="session")
def results(request) -> list[dict]:
    return request.config.stash.setdefault(RESULTS, [])


def pytest_terminal_summary(terminalreporter):
    rows = terminalreporter.config.stash.get(RESULTS, [])
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("Full MNIST test set on emulated ARM (qemu-user) vs x86 (the accuracy recorded by `digitpi export`):")
    write(f"{'arch':<6} {'core':<11} {'variant':<18} {'runs as':<18} {'ARM acc':>8} {'x86 acc':>8} "
          f"{'diff pts':>8} {'labels != x86':>13}")
    for r in rows:
        write(f"{r['arch']:<6} {r['core']:<11} {r['variant']:<18} {r['runs_as']:<18} {100 * r['accuracy']:>7.2f}% "
              f"{100 * r['x86']:>7.2f}% {100 * (r['accuracy'] - r['x86']):>+8.2f} {r['differ']:>13}")
    write("Emulated run times are not Raspberry Pi times and are not reported as such.")


@pytest.fixture(scope="session")
def emulators():
    from userland import ARCHES

    missing = [a.qemu for a in ARCHES.values() if shutil.which(a.qemu) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install qemu-user-static (`make pi-test` does)")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = Path(os.environ.get("DIGITPI_DATA_DIR", SHARED / "datasets" / "mnist"))
    if not any((folder / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
        pytest.fail(f"MNIST not found in {folder}: set DIGITPI_DATA_DIR")
    os.environ["DIGITPI_DATA_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def test_set(mnist_dir, tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The 10,000 test images and labels as .npy files in a temporary folder the emulated side reads."""
    from digitpi import data

    images, labels = data.load_split("mnist", "test", mnist_dir)
    folder = tmp_path_factory.mktemp("mnist")
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    return folder / "images.npy", folder / "labels.npy", images, labels


@pytest.fixture(scope="session")
def model(mnist_dir, tmp_path_factory) -> Path:
    """An export folder: $DIGITPI_PI_MODEL if set, else the quick `fast` recipe trained and exported here (~1 min)."""
    if os.environ.get("DIGITPI_PI_MODEL"):
        return Path(os.environ["DIGITPI_PI_MODEL"])
    run = tmp_path_factory.mktemp("run") / "fast"
    digitpi = Path(sys.executable).with_name("digitpi")
    subprocess.run([str(digitpi), "train", "--recipe", "fast", "--seed", "0", "--quiet", "--out", str(run)],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(digitpi), "export", str(run)], check=True, stdout=subprocess.DEVNULL)
    return run / "export"


@pytest.fixture(scope="session")
def card(model) -> dict:
    from digitpi.runtime import read_card

    return read_card(model)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """This checkout built as the wheel a user copies to the Pi (`pip wheel --no-deps .`)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True,
                   stdout=subprocess.DEVNULL)
    [built] = out.glob("digitpi-*.whl")
    return built


@pytest.fixture(scope="session")
def pictures(test_set, tmp_path_factory) -> list[Path]:
    """Picture files to `digitpi predict`: MNIST test digits printed on paper (PNG and JPEG, made here), and
    real handwriting from ../shared/wild-dev read in place (never copied)."""
    from PIL import Image

    _, _, images, labels = test_set
    folder = tmp_path_factory.mktemp("pictures")
    made = []
    for digit in range(10):
        index = int(np.flatnonzero(labels == digit)[0])
        paper = Image.fromarray(255 - images[index]).resize((196, 196), Image.BICUBIC)  # dark ink on white
        page = Image.new("L", (320, 260), 255)
        page.paste(paper, (40 + 7 * digit, 20 + 3 * digit))
        path = folder / f"digit{digit}.{'png' if digit % 2 else 'jpg'}"
        page.save(path, quality=85) if path.suffix == ".jpg" else page.save(path)
        made.append(path)
    wild = SHARED / "wild-dev"
    if (wild / "labels.csv").is_file():
        import csv

        with open(wild / "labels.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["kind"] == "single" and r["medium"] in ("photo", "canvas")]
        for medium in ("photo", "canvas"):
            made += [wild / r["file"] for r in rows if r["medium"] == medium][: WILD_PICTURES // 2]
    return made


@pytest.fixture(scope="session")
def pages(test_set, tmp_path_factory) -> list[Path]:
    """Pages to `digitpi predict --multi`: two lines of MNIST test digits printed on paper and turned 20
    degrees (read by turning the page level), and wild-dev's pages read in place."""
    from PIL import Image

    _, _, images, _ = test_set
    page = Image.new("L", (720, 360), 255)
    for k in range(10):
        page.paste(Image.fromarray(255 - images[k]).resize((112, 112), Image.BICUBIC),
                   (40 + 130 * (k % 5), 40 + 160 * (k // 5)))
    path = tmp_path_factory.mktemp("pages") / "turned.png"
    page.rotate(20, Image.BICUBIC, expand=True, fillcolor=255).save(path)
    wild = SHARED / "wild-dev"
    if not (wild / "labels.csv").is_file():
        return [path]
    import csv

    with open(wild / "labels.csv", newline="") as f:
        return [path, *(wild / r["file"] for r in csv.DictReader(f) if r["kind"] == "multi")]

