"""The GPU path: `--device cuda` and `auto` where torch sees a GPU; a one-line error where it does not;
mixed-precision training steps (`--amp`), on by default on a GPU.

The GPU tests run only where CUDA is present and are skipped with that reason elsewhere (this
project's machines and CI have no GPU); the CPU-only test runs everywhere else. The mixed-precision
test runs everywhere, on the GPU where there is one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from digitpi import UserError, config, data, train

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = f"no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}): GPU path not exercised"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)


@pytest.fixture(scope="module")
def subset(mnist_dir):
    """8,000 training images and the 10,000 test images as torch tensors."""
    x, y = data.load_split("mnist", "train", mnist_dir)
    tx, ty = data.load_split("mnist", "test", mnist_dir)
    return (torch.from_numpy(x[:8000].copy()), torch.from_numpy(y[:8000]),
            torch.from_numpy(tx.copy()), torch.from_numpy(ty))


@needs_cuda
def test_auto_picks_the_gpu() -> None:
    assert train.pick_device("auto").type == "cuda"
    assert train.pick_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"torch sees \d+ GPU"):  # one past the last GPU
        train.pick_device(f"cuda:{torch.cuda.device_count()}")


@needs_cuda
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_training_on_the_gpu_learns(device: str, subset) -> None:
    """Weights and the augmented batches live on the GPU; the model learns as on the CPU (98.5 % there)."""
    x, y, tx, ty = subset
    cfg = config.recipe_config("standard", epochs=2, device=device)
    result = train.train(cfg, progress=False, train_images=x, train_labels=y)
    assert all(p.device.type == "cuda" for p in result.model.parameters())
    assert result.amp == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")  # auto: mixed precision on a GPU
    _, accuracy, _ = train.evaluate(result.model, tx, ty)
    assert accuracy > 0.95


@needs_cuda
def test_gpu_and_cpu_train_the_same_recipe_alike(subset) -> None:
    """Same seed, same data: the GPU's model is within a point of the CPU's (not bit-identical: other kernels)."""
    x, y, tx, ty = subset
    accuracies = []
    for device in ("cpu", "cuda"):
        result = train.train(config.recipe_config("fast", epochs=2, device=device), progress=False,
                             train_images=x, train_labels=y)
        accuracies.append(train.evaluate(result.model, tx, ty)[1])
    assert abs(accuracies[0] - accuracies[1]) < 0.01, accuracies


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_learns_as_float32_does(amp: str, subset) -> None:
    """Steps autocast to bf16, or to fp16 with scaled gradients, reach float32's accuracy within a point; weights
    stay float32. Here on the CPU, where `auto` leaves it off (slower there), on the GPU where one is present."""
    x, y, tx, ty = subset
    accuracies = {}
    for precision in ("off", amp):
        result = train.train(config.recipe_config("fast", epochs=1, amp=precision), progress=False,
                             train_images=x, train_labels=y)
        assert result.amp == precision
        assert all(p.dtype == torch.float32 for p in result.model.parameters())
        accuracies[precision] = train.evaluate(result.model, tx, ty)[1]
    assert accuracies[amp] > 0.9 and abs(accuracies[amp] - accuracies["off"]) < 0.01, accuracies


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: the GPU tests above run instead")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_a_gpu_is_one_line(device: str, mnist_dir, tmp_path: Path) -> None:
    """Asked for a GPU this machine lacks, `digitpi train` says so before reading data or making a folder."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "digitpi", "train", "--device", device, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"--device {device}: no CUDA device here" in done.stderr, done.stderr
    assert not out.exists()
    assert train.pick_device("auto").type == "cpu"
    assert train.pick_amp("auto", train.pick_device("auto")) == "off"  # float32 on the CPU unless asked
