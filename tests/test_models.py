"""Every model of the zoo: output shape, finite outputs, gradients everywhere, pinned sizes."""

from __future__ import annotations

import pytest
import torch

from digitpi import config, models

# The course's three models must keep their exact sizes; ours are pinned so a change is deliberate.
PARAMS = {
    "mlp": 669_706,
    "baseline_cnn": 542_230,
    "course_cnn": 503_762,
    "pytorch_example": 1_199_882,
    "fast_cnn": 29_178,
    "sprint_cnn": 29_290,
    "mid_cnn": 40_794,
    "tiny_cnn": 9_202,
    "micro_cnn": 4_924,
    "best_cnn": 150_698,
    "best5_cnn": 268_778,  # 5x5 convs 1->32->64->128, then 128*3*3 -> 10
}


def test_every_model_has_a_pinned_size() -> None:
    assert set(PARAMS) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model(name: str) -> None:
    torch.manual_seed(0)
    model = models.create_model(name)
    assert models.count_params(model) == PARAMS[name] == models.check_model(name, {})  # meta device: no weights
    x = torch.rand(4, 1, 28, 28)
    out = model.train()(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_five_by_five_members_train_by_best_and_refuse_even_kernels() -> None:
    """best5_cnn is the README's second kind of ensemble member: `digitpi train --model best5_cnn` trains it by
    `best`'s recipe, as best_cnn, and it is compact_cnn's kernel, so any layout can take 5x5 convs."""
    assert config.recipe_config(model="best5_cnn") == config.recipe_config("best", model="best5_cnn")
    assert models.check_model("best_cnn", {"stages": [[32], [64], [128]], "kernel": 5}) == PARAMS["best5_cnn"]
    with pytest.raises(models.UserError, match="kernel must be an odd positive integer, got 4"):
        models.check_model("best_cnn", {"kernel": 4})


def test_summary_is_laid_out_as_keras_does() -> None:
    text = models.format_summary(models.create_model("course_cnn"), "course_cnn")
    lines = text.splitlines()
    assert lines[0] == 'Model: "course_cnn"'
    assert lines[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#"]
    assert lines[-4:-1] == ["Total params: 503,762", "Trainable params: 503,762", "Non-trainable params: 0"]
    assert "(None, 128, 1, 1)" in text  # 28 -> 14 -> 7 -> 3 -> 1, as in the course
    names = [line.split()[0] for line in lines[4:-5] if line.strip()]
    assert names[:4] == ["zero_pad2d", "conv2d", "re_lu", "max_pool2d"] and names[4:6] == ["zero_pad2d_1", "conv2d_1"]
    assert len(set(names)) == len(names) and names[-1] == "linear_3"


def test_summary_counts_batchnorm_statistics_as_non_trainable() -> None:
    """Keras counts BatchNorm's moving mean and variance as non-trainable parameters; so does our summary."""
    text = models.format_summary(models.create_model("fast_cnn"), "fast_cnn")
    channels = 16 + 32 + 64
    assert f"Total params: {29_178 + 2 * channels:,}" in text and "Trainable params: 29,178" in text
    assert f"Non-trainable params: {2 * channels}" in text
    assert " batch_norm2d (BatchNorm2d) " in text and " 64\n" in text  # 16 channels: 2 x 16 trained + 2 x 16 not


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(models.UnknownModelError, match="unknown model 'resnet'; choose one of: mlp"):
        models.create_model("resnet")
