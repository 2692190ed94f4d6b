"""Shared fixtures: the real MNIST data and two models trained on it once per test session.

The default model (`trained_run`, `exported_dir`) is what `make main` trains: about a minute on the
full training set, so every test that uses it is marked `slow`. Tests that need *a* trained and
exported fast_cnn, but not the default one, take `fast_run` / `fast_export`: the `fast` recipe
(two epochs, no augmentation, ~99.3 %), a few seconds. `pytest -m "not slow"` runs those only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# `pytest -n N` (make test): the workers share the cores, so each (and what it starts) gets its share of threads
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The genuine MNIST folder: DIGITPI_DATA_DIR (set by .ci/run), else ../shared beside the repo."""
    folder = Path(os.environ.get("DIGITPI_DATA_DIR", SHARED_MNIST))
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file() and not (folder / "t10k-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST not found in {folder}: set DIGITPI_DATA_DIR")
    os.environ["DIGITPI_DATA_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    """(images uint8 N x 28 x 28, labels int64 N) of the real 10,000-image test set."""
    from digitpi import data

    return data.load_split("mnist", "test", mnist_dir)


@pytest.fixture(scope="session")
def trained_output(mnist_dir, tmp_path_factory) -> tuple[Path, str]:
    """`digitpi train` of the default model on the full training set, as a user runs it: (run folder, stdout).

    Trained once per suite: under `pytest -n N` the first worker to ask trains it with all the machine's
    threads (the model `make main` trains here); a worker that asks meanwhile waits for it."""
    import contextlib
    import io

    import torch
    from filelock import FileLock

    from digitpi import cli

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if "PYTEST_XDIST_WORKER" in os.environ else shared  # the workers' common folder
    out, printed = shared / "default-run", shared / "default-run.stdout"
    with FileLock(shared / "default-run.lock"):
        if not printed.exists():  # written last: a failed training leaves no run for the others
            stdout, threads = io.StringIO(), torch.get_num_threads()
            if WORKERS > 1:
                torch.set_num_threads(os.cpu_count() or threads)
            try:
                with contextlib.redirect_stdout(stdout):
                    assert cli.main(["train", "--out", str(out), "--seed", "0"]) == 0
            finally:
                torch.set_num_threads(threads)
            printed.write_text(stdout.getvalue())
    return out, printed.read_text()


@pytest.fixture(scope="session")
def trained_run(trained_output) -> Path:
    """A run folder of the default model (`standard` recipe) trained on the full real training set."""
    return trained_output[0]


@pytest.fixture(scope="session")
def exported_dir(trained_run, tmp_path_factory) -> Path:
    """`trained_run` exported once (`digitpi export`): model.onnx, model.int8.onnx, weights.npz, model.json."""
    from digitpi import export

    out = tmp_path_factory.mktemp("export") / "standard"
    export.export_run(trained_run, out)
    return out


DEFAULT_MODEL = {"trained_output", "trained_run", "exported_dir"}


def pytest_collection_modifyitems(items) -> None:
    """Mark `slow` every test that needs the default model, however indirectly (through another fixture)."""
    for item in items:
        if DEFAULT_MODEL & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fast_run(mnist_dir, tmp_path_factory) -> Path:
    """`digitpi train --recipe fast` (fast_cnn, two epochs, no augmentation) on the full real training set."""
    import contextlib
    import io

    from digitpi import cli

    out = tmp_path_factory.mktemp("run") / "fast"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--recipe", "fast", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def fast_export(fast_run, tmp_path_factory) -> Path:
    """`fast_run` exported once: model.onnx, model.int8.onnx, weights.npz, model.json."""
    from digitpi import export

    out = tmp_path_factory.mktemp("export") / "fast"
    export.export_run(fast_run, out)
    return out
