"""Ensemble export (`digitpi export RUN_A RUN_B --out DIR`): one folder the Pi reads like any other.

Two `sprint` runs (sprint_cnn, one epoch, seeds 0 and 1)
are exported together; torch (`evaluate.Ensemble`), ONNX fp32, int8 and NumPy are compared on all
10,000 real test images. Mistakes (a missing run, runs of two datasets) are checked on untrained
runs, which cost no training.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from digitpi import card, contract, export, rundir, runtime
from digitpi.cli import main
from digitpi.config import Config
from digitpi.evaluate import Ensemble
from digitpi.models import create_model

SEEDS = (0, 1)
INT8_TOLERANCE = 0.0005  # int8 may read at most 5 of the 10,000 test digits differently from fp32 (0.05 points)
MEMBER_TOLERANCE = 0.001  # the ensemble reads at least as well as its best member, less 10 digits of 10,000


@pytest.fixture(scope="module")
def member_runs(mnist_dir, tmp_path_factory) -> list:
    """`digitpi train --recipe sprint --seed S` for each seed: sprint_cnn after one epoch, ~99.3 %."""
    runs = []
    for seed in SEEDS:
        out = tmp_path_factory.mktemp("run") / f"sprint-seed{seed}"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", "--recipe", "sprint", "--seed", str(seed), "--quiet", "--out", str(out)]) == 0
        runs.append(out)
    return runs


@pytest.fixture(scope="module")
def ensemble_output(member_runs, tmp_path_factory) -> tuple:
    """`digitpi export RUN_A RUN_B --out DIR`, as a user runs it: (export folder, stdout)."""
    out = tmp_path_factory.mktemp("export") / "ensemble"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", *map(str, member_runs), "--out", str(out)]) == 0
    return out, stdout.getvalue()


@pytest.fixture(scope="module")
def ensemble_dir(ensemble_output):
    return ensemble_output[0]


@pytest.fixture(scope="module")
def torch_probabilities(member_runs, mnist_test) -> np.ndarray:
    """The reference: `evaluate.Ensemble` of the runs as trained (BatchNorm not folded), softmax of its output."""
    model = Ensemble([rundir.load_checkpoint(run)[0] for run in member_runs])
    return runtime.softmax(export.torch_logits(model, contract.to_model_input(mnist_test[0])))


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    return float((labels == truth).mean())


@pytest.mark.slow
@pytest.mark.parametrize("precision, backend", [("fp32", "onnxruntime"), ("fp32", "numpy")])
def test_fp32_and_numpy_read_every_test_digit_as_torch_does(ensemble_dir, mnist_test, torch_probabilities,
                                                            precision, backend):
    classifier = runtime.Classifier.load(ensemble_dir, precision=precision, backend=backend)
    assert classifier.backend_name == backend
    labels, probabilities = classifier.predict(mnist_test[0])
    np.testing.assert_array_equal(labels, torch_probabilities.argmax(1))
    assert np.abs(probabilities - torch_probabilities).max() < 1e-5  # measured: 7e-7 (onnxruntime and numpy)


@pytest.mark.slow
def test_the_output_is_the_log_of_the_members_mean_probability(ensemble_dir, member_runs, mnist_test):
    """softmax of what the runtime gets is the mean of the members' own probabilities (not of their logits)."""
    x = contract.to_model_input(mnist_test[0][:1000])
    members = [runtime.softmax(export.torch_logits(rundir.load_checkpoint(run)[0], x)) for run in member_runs]
    logits = runtime.Classifier.load(ensemble_dir, precision="fp32", backend="onnxruntime").logits(x)
    np.testing.assert_allclose(np.exp(logits), np.mean(members, axis=0), atol=1e-5)


@pytest.mark.slow
def test_int8_reads_as_well_as_fp32(ensemble_dir, mnist_test):
    images, truth = mnist_test
    measured = {p: accuracy(runtime.Classifier.load(ensemble_dir, precision=p).predict(images).labels, truth)
                for p in ("fp32", "int8")}
    assert abs(measured["int8"] - measured["fp32"]) <= INT8_TOLERANCE
    assert (ensemble_dir / "model.int8.onnx").stat().st_size < (ensemble_dir / "model.onnx").stat().st_size / 2
    test_accuracy = json.loads((ensemble_dir / "model.json").read_text())["test_accuracy"]
    assert test_accuracy["int8"] == pytest.approx(measured["int8"])  # the card reports what runs
    assert test_accuracy["fp32"] == pytest.approx(measured["fp32"])


@pytest.mark.slow
def test_the_ensemble_reads_at_least_as_well_as_its_best_member(ensemble_dir, member_runs, mnist_test):
    images, truth = mnist_test
    x = contract.to_model_input(images)
    alone = [accuracy(export.torch_logits(rundir.load_checkpoint(run)[0], x).argmax(1), truth) for run in member_runs]
    together = accuracy(runtime.Classifier.load(ensemble_dir, precision="fp32").predict(images).labels, truth)
    assert together >= max(alone) - MEMBER_TOLERANCE
    members = json.loads((ensemble_dir / "model.json").read_text())["members"]
    assert [m["test_accuracy"] for m in members] == pytest.approx(alone)  # the card's per-member numbers


@pytest.mark.slow
def test_card_lists_the_members_and_loads(ensemble_output, member_runs):
    out, stdout = ensemble_output
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx", "weights.npz"]
    checked = card.read_card(out)  # schema and checksum
    members = checked["members"]
    assert "layers" not in checked and "model_args" not in checked
    assert [m["run"] for m in members] == [run.name for run in member_runs]
    assert [m["model"] for m in members] == ["sprint_cnn"] * len(SEEDS)
    assert [m["params"] for m in members] == [29_290] * len(SEEDS)
    assert checked["params"] == sum(m["params"] for m in members)
    assert checked["model"] == " + ".join(["sprint_cnn"] * len(SEEDS))
    assert set(checked["test_accuracy"]) == {"torch", "fp32", "int8", "numpy"}
    assert checked["source"]["runs"] == [str(run.resolve()) for run in member_runs]
    from digitpi import serve

    shown = json.dumps(serve.public_card(checked))  # GET /model: without the PC's paths
    assert str(member_runs[0].resolve()) not in shown and checked["source"]["checkpoint_sha256"][0] in shown
    with np.load(out / "weights.npz", allow_pickle=False) as archive:
        names = set(archive.files)
    for i, member in enumerate(members):  # every member's arrays, under its own prefix
        named = {layer[k] for layer in member["layers"] for k in ("weight", "bias", "scale", "shift") if layer.get(k)}
        assert named and all(name.startswith(f"m{i}.") for name in named) and named <= names
    assert "member 1: sprint_cnn from sprint-seed1" in stdout and "int8" in stdout


@pytest.mark.slow
def test_bench_infer_measures_the_ensemble(ensemble_dir, member_runs):
    """The README's inference table row of an ensemble: torch runs the members' own checkpoints. (Every
    backend of one model: tests/test_export.py; here torch, new for ensembles, and the Pi's int8.)"""
    done = subprocess.run([sys.executable, "-m", "digitpi.cli", "bench", "infer", str(ensemble_dir), "--backends",
                           "torch,onnx-int8", "--calls", "5", "--seconds", "0.05", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {r["backend"]: r for r in json.loads(done.stdout)["rows"]}
    assert list(rows) == ["torch", "onnx-int8"]
    tested = json.loads((ensemble_dir / "model.json").read_text())["test_accuracy"]
    for backend, key in [("torch", "torch"), ("onnx-int8", "int8")]:
        row = rows[backend]
        assert row["model"] == f"{len(SEEDS)} x sprint_cnn" and row["epochs"] == row["epochs_run"] == 1
        assert row["test_accuracy"] == tested[key] and row["p50_ms"] > 0 and row["images_per_s_2t"] > 0
    assert rows["torch"]["file_bytes"] == sum((run / rundir.CHECKPOINT).stat().st_size for run in member_runs)


@pytest.mark.slow
@pytest.mark.parametrize("broken, message", [
    (lambda c: c["members"].pop(), "at least two"),
    (lambda c: c["members"][1].pop("layers"), "member 1: no layer list"),
    (lambda c: c.__setitem__("layers", c["members"][0]["layers"]), "both a layer list and members"),
])
def test_a_broken_ensemble_card_is_refused(ensemble_dir, tmp_path, broken, message):
    for path in ensemble_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    edited = json.loads((ensemble_dir / "model.json").read_text())
    broken(edited)
    (tmp_path / "model.json").write_text(json.dumps(card.seal(edited)))  # sealed: only the schema can refuse it
    with pytest.raises(card.ModelFileError, match=message):
        runtime.Classifier.load(tmp_path, backend="numpy")


# ---------------------------------------------------------------- without training


def test_log_mean_softmax_is_the_torch_ensembles_even_where_probabilities_underflow():
    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 5, (50, 10)).astype(np.float32) for _ in range(3)]
    logits[0][0] = [300, *[0] * 9]  # exp(-300) is 0 in float32: a plain log of the mean would be -inf

    class Fed(nn.Module):  # a member that gives fixed logits, whatever the input
        def __init__(self, i: int) -> None:
            super().__init__()
            self.i = i

        def forward(self, x):
            return torch.from_numpy(logits[self.i])

    reference = Ensemble([Fed(i) for i in range(len(logits))])(torch.zeros(1)).numpy()
    ours = runtime.log_mean_softmax(logits)
    assert np.isfinite(ours).all() and np.isfinite(reference).all()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(runtime.softmax(ours), np.mean([runtime.softmax(x) for x in logits], 0), atol=1e-6)


def untrained_run(folder, dataset: str = "mnist"):
    """A run folder with fast_cnn's initial weights: enough for export to load it and refuse the mix."""
    cfg = Config(model="fast_cnn", dataset=dataset)
    rundir.save_run(folder, create_model(cfg.model).eval(), cfg, {}, {})
    return folder


def one_line_error(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.err.startswith("digitpi: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_runs_of_two_datasets_are_refused(tmp_path, capsys):
    mnist, fashion = untrained_run(tmp_path / "digits"), untrained_run(tmp_path / "clothes", "fashion-mnist")
    err = one_line_error(["export", str(mnist), str(fashion), "--out", str(tmp_path / "out")], capsys)
    assert "must share a dataset" in err and "clothes on fashion-mnist" in err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_run_named_twice_is_refused(tmp_path, capsys, monkeypatch):
    """`runs/best-{0,1,1}`: the same run twice would weigh it double; evaluate and export both refuse it."""
    run, other = untrained_run(tmp_path / "digits"), untrained_run(tmp_path / "other")
    monkeypatch.chdir(tmp_path)  # the same folder by two names
    for command in (["export", str(run), str(other), "digits/", "--out", str(tmp_path / "out")],
                    ["evaluate", str(run), str(other), "digits/"]):
        assert "digits is named twice" in one_line_error(command, capsys)
    assert not (tmp_path / "out").exists()


def test_a_missing_member_and_a_missing_out_are_refused(tmp_path, capsys):
    run = untrained_run(tmp_path / "digits")
    err = one_line_error(["export", str(run), str(tmp_path / "no-such-run"), "--out", str(tmp_path / "out")], capsys)
    assert "no run folder" in err and "no-such-run" in err
    assert "--out" in one_line_error(["export", str(run), str(run)], capsys)
    assert not (tmp_path / "out").exists() and not (run / "export").exists()


def test_a_member_without_one_score_per_class_is_refused(tmp_path):
    fits = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    misfit = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 5))
    members = [export.Member(fits, "linear", {}, "a"), export.Member(misfit, "linear5", {}, "b")]
    with pytest.raises(export.ExportError, match=r"b: linear5 gives \(5,\) scores an image, mnist has 10 classes"):
        export.export_ensemble(members, tmp_path / "out")
    assert not (tmp_path / "out").exists()
