"""Every model of the zoo: output shape, finite outputs, gradients everywhere, pinned sizes."""

from __future__ import annotations

import pytest
import torch

from digitpi import models

# The course's three models must keep their exact sizes; ours are pinned so a change is deliberate.
PARAMS = {
    "mlp": 669_706,
    "baseline_cnn": 542_230,
    "course_cnn": 503_762,
    "pytorch_example": 1_199_882,
    "fast_cnn": 29_178,
    "mid_cnn": 40_794,
    "tiny_cnn": 9_202,
    "best_cnn": 150_698,
}


def test_every_model_has_a_pinned_size() -> None:
    assert set(PARAMS) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model(name: str) -> None:
    torch.manual_seed(0)
    model = models.create_model(name)
    assert models.count_params(model) == PARAMS[name]
    x = torch.rand(4, 1, 28, 28)
    out = model.train()(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_summary_ends_with_total_params() -> None:
    text = models.format_summary(models.create_model("course_cnn"), "course_cnn")
    assert text.splitlines()[-1] == "Total params: 503,762"
    assert "(None, 128, 1, 1)" in text  # 28 -> 14 -> 7 -> 3 -> 1, as in the course


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(models.UnknownModelError, match="unknown model 'resnet'; choose one of: mlp"):
        models.create_model("resnet")
