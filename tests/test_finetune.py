"""`digitpi finetune` on a synthetic writer: real MNIST *training* digits written with a fat marker
(each stroke widened by a 5x5 maximum filter), which the default model reads only about 75 % right
(fast_run: about 77 %). Taught 30 of each digit, a run must read the writer's held-out digits better
and keep reading MNIST; the result is a run folder that `digitpi export` takes. The test set never
enters training: the writer's digits come from the training split, the MNIST replay too.

A fat marker, not a mirror: mirrored digits look like other digits (a mirrored 5 is nearly a 2), so
teaching them cost fast_cnn (`standard` recipe) 0.5-0.8 points of MNIST validation accuracy in every setting
tried; a fat marker is a style, like a real writer's.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from digitpi import data, finetune, rundir, samples
from digitpi.cli import main
from digitpi.config import FinetuneConfig

PER_DIGIT = 40  # samples per digit the writer gives: 10 held out by the default --holdout 0.25, 30 taught
MNIST_FLOOR = 0.993  # issue 17: the fine-tuned default model keeps at least this on the MNIST test set


def fat_marker_writer(per_digit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_digit` MNIST training digits of each class, every stroke widened by a 5x5 maximum filter."""
    images, labels = data.load_split("mnist", "train")
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(labels == d), per_digit, replace=False) for d in range(10)])
    padded = np.pad(images[picks], ((0, 0), (2, 2), (2, 2)))
    fat = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2)).max(axis=(-1, -2))
    return np.ascontiguousarray(fat), labels[picks]


@pytest.fixture(scope="module")
def writer_db(mnist_dir, tmp_path_factory):
    """The writer's samples in a samples database, as `serve --collect` keeps them."""
    images, labels = fat_marker_writer(PER_DIGIT, seed=1)
    path = tmp_path_factory.mktemp("writer") / "samples.db"
    with samples.SampleStore(path) as store:
        store.add_many([samples.Sample(label=int(label), input=image, picture=samples.png_bytes(image),
                                       picture_format="PNG", origin="teach") for image, label in zip(images, labels)])
    return path


def test_holdout_keeps_every_digit_in_both_parts_and_follows_the_seed():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 8, 8, 8, 8, 8, 20])
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    split = finetune.split_samples(images, labels, 0.25, seed=0)
    held = np.bincount(split.test_labels, minlength=10)
    assert held.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2, 5]
    assert (np.bincount(split.train_labels, minlength=10) >= 1).all()
    again = finetune.split_samples(images, labels, 0.25, seed=0)
    np.testing.assert_array_equal(split.test_images, again.test_images)
    other = finetune.split_samples(images, labels, 0.25, seed=1)
    assert not np.array_equal(split.test_images, other.test_images)
    assert len(finetune.split_samples(images, labels, 0.0, seed=0).test_labels) == 0


def test_finetune_teaches_the_writer_and_keeps_mnist(fast_run, writer_db, tmp_path, capsys):
    out = tmp_path / "taught"
    assert main(["finetune", str(fast_run), "--samples", str(writer_db), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held-out samples (100)" in printed and "MNIST test set" in printed
    report = rundir.load_metrics(out)["finetune"]
    print(f"\nfat-marker writer: {100 * report['holdout_before']:.1f} % -> {100 * report['holdout_after']:.1f} %; "
          f"MNIST {100 * report['mnist_before']:.2f} % -> {100 * rundir.load_metrics(out)['test_accuracy']:.2f} %; "
          f"{report['train_seconds']:.1f} s")
    assert report["trained_on"] == 300 and report["held_out"] == 100
    assert report["holdout_after"] >= report["holdout_before"] + 0.08  # measured: +11 to +14 points on 500
    assert rundir.load_metrics(out)["test_accuracy"] >= report["mnist_before"] - 0.003
    assert rundir.is_complete(out)

    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    card = json.loads((tmp_path / "export" / "model.json").read_text())
    assert card["source"]["run"] == str(out.resolve())


def test_same_seed_same_model(fast_run, writer_db):
    model, cfg = rundir.load_checkpoint(fast_run)
    images, labels = samples.read_samples(writer_db)
    split = finetune.split_samples(images, labels, 0.25, seed=3)
    small = FinetuneConfig(epochs=1, replay=1000, seed=3)
    first, second = (finetune.finetune_model(model, cfg, split, small).model.state_dict() for _ in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    changed = finetune.finetune_model(model, cfg, split, FinetuneConfig(epochs=1, replay=1000, seed=4))
    assert not all(torch.equal(first[k], v) for k, v in changed.model.state_dict().items())
    original = rundir.load_checkpoint(fast_run)[0].state_dict()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the run's model is untouched


def test_the_default_model_keeps_mnist_above_the_floor(trained_run, writer_db, tmp_path):
    report = finetune.finetune_run(trained_run, writer_db, tmp_path / "taught", progress=False)
    print(f"\ndefault model, fat-marker writer: {100 * report['holdout_before']:.1f} % -> "
          f"{100 * report['holdout_after']:.1f} %; MNIST {100 * report['mnist_after']:.2f} %")
    assert report["mnist_after"] >= MNIST_FLOOR
    assert report["holdout_after"] >= report["holdout_before"] + 0.12  # measured: 76 -> 96 % (mid_cnn)


def test_a_run_copied_from_another_pc_is_taught_from_inside_it(fast_run, mnist_dir, tmp_path, monkeypatch, capsys):
    """The run folder copied from another PC, its MNIST folder gone: `--data-dir` says where MNIST is here.
    `finetune .` in it writes beside it; a picture among the user's that cannot be read is skipped."""
    copied = tmp_path / "copied"
    shutil.copytree(fast_run, copied)
    config = json.loads((copied / rundir.CONFIG).read_text())
    (copied / rundir.CONFIG).write_text(json.dumps({**config, "data_dir": str(tmp_path / "alice" / "mnist")}))
    images, labels = fat_marker_writer(4, seed=2)
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "mine" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - image).save(tmp_path / "mine" / str(label) / f"{i}.png")
    (tmp_path / "mine" / "3" / "notes.png").write_text("not a picture")
    monkeypatch.chdir(copied)
    small = ["--samples", str(tmp_path / "mine"), "--epochs", "1", "--replay", "500", "--quiet"]
    assert main(["finetune", ".", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alice" in err
    assert main(["finetune", ".", *small, "--data-dir", str(mnist_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "notes.png" in captured.err
    assert "skipped 1 pictures" in captured.out and rundir.is_complete(tmp_path / "copied-finetuned")
    assert rundir.load_metrics(tmp_path / "copied-finetuned")["finetune"]["per_digit"] == [4] * 10
    assert main(["finetune", "/", *small]) == 2
    assert "say where with --out" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--samples", "{empty}"], "holds no samples"),
    (["--samples", "{missing}"], "no such file or folder"),
    (["--samples", "{db}", "--holdout", "1.5"], "--holdout must be in"),
    (["--samples", "{db}", "--out", "{run}"], "is the run being fine-tuned"),
])
def test_mistakes_are_one_line(fast_run, writer_db, tmp_path, capsys, argv, words):
    samples.SampleStore(tmp_path / "empty.db").close()
    names = {"empty": tmp_path / "empty.db", "missing": tmp_path / "nothing", "db": writer_db, "run": fast_run}
    assert main(["finetune", str(fast_run), *[a.format(**names) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
