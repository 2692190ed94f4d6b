"""Shared fixtures: the real MNIST data and one model trained on it once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def trained_run(mnist_dir, tmp_path_factory) -> Path:
    """A run folder of the default model trained with the `fast` recipe on the full training set."""
    from digitpi import evaluate, train

    out = tmp_path_factory.mktemp("run") / "fast"
    result = train.train(train.recipe_config("fast", data_dir=str(mnist_dir)), progress=False)
    evaluate.finish_run(result, out, plots=False)
    return out
