"""Every user mistake and every corrupt input the command meets ends in one line on stderr and exit 2,
never a traceback, and leaves no half-made folder behind: damaged checkpoints and run configs, model
cards that lost a field or were edited, a picture file name without an extension, pictures too large
to decode, outputs that are not files, a data folder that is not one (a device this machine lacks:
test_cuda)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitpi import card, preprocess
from digitpi.bench.hostile import png_stream
from digitpi.cli import main


def one_line_error(argv: list[str], capsys) -> str:
    """The command's stderr, after checking it failed with exit 2 and one line, printing nothing else."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("digitpi: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """The real command in its own process; a server that starts after all would end at the timeout."""
    return subprocess.run([sys.executable, "-m", "digitpi.cli", *argv], capture_output=True, text=True, timeout=120)


def copy_run(fast_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(fast_run, run, ignore=shutil.ignore_patterns("export", "*.png"))
    return run


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    tensor = next(name for name in header if name != "__metadata__")
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "header byte":  # the JSON header itself damaged
        raw[8 + size // 2] = 0xFF
    elif how == "header length":
        raw[:8] = (size // 2).to_bytes(8, "little")
    elif how == "header dtype":  # valid JSON that safetensors refuses (its SafetensorError is no RuntimeError)
        header[tensor]["dtype"] = "X" * len(header[tensor]["dtype"])
        raw[8:8 + size] = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    else:  # one bit of one weight flipped, as a bad copy or a failing card does
        raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------- run folders


@pytest.mark.parametrize("how, message", [("truncated", "not a readable checkpoint"),
                                          ("header byte", "not a readable checkpoint"),
                                          ("header length", "not a readable checkpoint"),
                                          ("header dtype", "not a readable checkpoint"),
                                          ("flipped", "do not match their SHA-256")])
def test_damaged_checkpoint(how, message, fast_run, tmp_path, capsys):
    run = copy_run(fast_run, tmp_path)
    damage(run / "model.safetensors", how)
    assert message in one_line_error(["export", str(run)], capsys)
    assert not (run / "export").exists()  # nothing half-made
    assert message in one_line_error(["evaluate", str(run)], capsys)


def test_a_checkpoint_larger_than_any_model_is_not_read(fast_run, tmp_path, capsys):
    """A 2 GB file in place of the weights (sparse: it takes no disk) is refused by its size, not read into memory."""
    run = copy_run(fast_run, tmp_path)
    with open(run / "model.safetensors", "r+b") as f:
        f.truncate(2 * 10**9)
    assert "2.0 GB, more than the weights of any model" in one_line_error(["evaluate", str(run)], capsys)


def test_checkpoints_carry_a_checksum(fast_run):
    raw = (fast_run / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert len(header["__metadata__"]["tensors_sha256"]) == 64


@pytest.mark.parametrize("config, message", [
    ("[1, 2]", "expected a JSON object, found a list"),
    ("{not json", "unreadable"),
    ('{"model": "fast_cnn", "epochs": "many"}', "not a valid run config"),
    ('{"model": "fast_cnn", "model_args": {"width": 3}}', "cannot build fast_cnn from model args"),
    ('{"model": "fast_cnn", "data_dir": 5}', "data_dir must be str or null, got 5"),
    ('{"model": "fast_cnn", "seed": "zero"}', "seed must be int, got 'zero'"),
    ('{"model": "fast_cnn", "seed": 1e23}', "seed must be int, got 1e+23"),
    ('{"model": "nope_cnn"}', "config.json: unknown model 'nope_cnn'"),
    ('{"model": "fast_cnn", "model_args": {"stages": [[30000], [30000]]}}', "more than the 100,000,000 digitpi builds"),
    ("[" * 100_000, "unreadable"),
    ('{"model": "fast_cnn", "device": "cuda\\nTraceback (most recent call last):"}', "--device must be one of"),
])
def test_broken_run_config(config, message, fast_run, tmp_path, capsys):
    run = copy_run(fast_run, tmp_path)
    (run / "config.json").write_text(config)
    assert message in one_line_error(["evaluate", str(run)], capsys)
    assert message in one_line_error(["export", str(run)], capsys)


@pytest.mark.parametrize("change, message", [
    ({"val_split": 0.0}, "held no training images out for validation: train it with --val-split 0.1"),
    ({"seed": 1}, "must hold out the same validation images"),
])
def test_validation_needs_one_held_out_split(change, message, fast_run, tmp_path, capsys):
    """Runs are measured together on validation images only where none of them trained on those images."""
    run = copy_run(fast_run, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, **change}))
    assert message in one_line_error(["evaluate", str(fast_run), str(run), "--validation"], capsys)


def test_run_and_export_files_are_readable_by_others(fast_run, fast_export):
    """Every file gets the mode the umask gives (0644 under the usual 022), as the plots always did: a
    service user on the Pi reads an export another user copied."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [*fast_run.iterdir(), *fast_export.iterdir()]:
        if path.is_file():
            assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask), path


# ---------------------------------------------------------------- export folders


def test_export_replaces_an_export_and_nothing_else(fast_run, fast_export, tmp_path, capsys):
    """An earlier export is replaced whole (and the output says so); a folder holding a user's own
    model.onnx, or a folder where an export's file goes, is refused and left as it was."""
    from digitpi.runtime import Classifier

    again = tmp_path / "again"
    shutil.copytree(fast_export, again)
    (again / "notes.txt").write_text("mine")
    assert main(["export", str(fast_run), "--out", str(again)]) == 0
    assert f"replaced the export that was in {again}" in capsys.readouterr().out
    assert Classifier.load(again).card["model"] == "fast_cnn" and (again / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in again.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx", "notes.txt",
                                                        "weights.npz"]  # no staging folder left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.onnx").write_bytes(b"my own model")
    err = one_line_error(["export", str(fast_run), "--out", str(mine)], capsys)
    assert "holds model.onnx with no digitpi card beside them (your own files, or an export cut short)" in err
    assert (mine / "model.onnx").read_bytes() == b"my own model" and len(list(mine.iterdir())) == 1
    (mine / "model.onnx").unlink()
    (mine / "weights.npz").mkdir()
    assert "weights.npz is a folder, not a regular file" in one_line_error(
        ["export", str(fast_run), "--out", str(mine)], capsys)
    assert [p.name for p in mine.iterdir()] == ["weights.npz"]


def test_an_export_cut_short_while_moving_in_keeps_its_card_and_is_replaced(fast_run, fast_export, tmp_path,
                                                                             monkeypatch, capsys):
    """A rename that fails after the first file: the error names the file, the earlier card stays (the
    runtime checks each file against it by SHA-256), and the next export replaces the folder's files."""
    from digitpi.runtime import Classifier

    folder = tmp_path / "export"
    shutil.copytree(fast_export, folder)
    card_before = (folder / "model.json").read_bytes()
    real_replace, moved = os.replace, []

    def failing(src, dst):  # into the export folder: the first move works, the next fails
        if Path(dst).parent == folder:
            if moved:
                raise PermissionError(1, "Operation not permitted")
            moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    err = one_line_error(["export", str(fast_run), "--out", str(folder)], capsys)
    assert f"cannot write {folder / 'model.int8.onnx'}: Operation not permitted" in err
    assert moved == ["model.onnx"] and (folder / "model.json").read_bytes() == card_before
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["export", str(fast_run), "--out", str(folder)]) == 0
    Classifier.load(folder, precision="fp32")
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_first_export_cut_short_while_moving_in_leaves_no_file(fast_run, tmp_path, monkeypatch, capsys):
    """No export there before: the files moved in before a failing rename are taken out again, so the
    next export is not refused as if they were the user's."""
    folder = tmp_path / "export"
    real_replace = os.replace

    def failing(src, dst):
        if Path(dst).name == "weights.npz":
            raise PermissionError(1, "Operation not permitted")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    assert "cannot write" in one_line_error(["export", str(fast_run), "--out", str(folder)], capsys)
    assert not folder.exists()  # emptied, then removed by the command that made it
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["export", str(fast_run), "--out", str(folder)]) == 0


def test_an_export_cut_short_leaves_the_earlier_export_whole(fast_run, fast_export, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or a failure) after a file is written: the folder still holds the earlier export, and it loads."""
    from digitpi import export
    from digitpi.runtime import Classifier

    folder = tmp_path / "export"
    shutil.copytree(fast_export, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupted(job, log):
        export.WRITERS["fp32"](job, job.path("fp32"))
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_variants", interrupted)
    assert main(["export", str(fast_run), "--out", str(folder)]) == 130
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    Classifier.load(folder)


def edited_export(fast_export: Path, tmp_path: Path, edit, reseal: bool = False) -> Path:
    """A copy of the export whose card `edit` changed; `reseal`: with a matching checksum, as a buggy
    exporter would write it, so the schema and the load-time run are what must catch it."""
    folder = tmp_path / "export"
    shutil.copytree(fast_export, folder)
    path = folder / "model.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(card.seal(content) if reseal else content))
    return folder


def drop_input(content: dict) -> None:
    del content["input"]


def rescale(content: dict) -> None:
    content["input"]["scale"] = 1.0


def missing_weight(content: dict) -> None:
    content["layers"][0]["weight"] = "no.such.weight"


def scan_png(tmp_path: Path, mnist_test) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(255 - mnist_test[0][0]).resize((112, 112)).save(path)
    return path


@pytest.mark.parametrize("edit, reseal, message", [
    (drop_input, True, "incomplete or invalid model card"),
    (drop_input, False, "was changed after export"),
    (rescale, False, "was changed after export"),
])
def test_incomplete_or_edited_card(edit, reseal, message, fast_export, tmp_path, mnist_test, capsys):
    folder = edited_export(fast_export, tmp_path, edit, reseal)
    picture = scan_png(tmp_path, mnist_test)
    assert message in one_line_error(["predict", "--model", str(folder), str(picture)], capsys)
    served = run_cli("serve", "--model", str(folder), "--port", "0")  # fails at start, not on each request
    assert served.returncode == 2 and served.stderr.count("\n") == 1 and message in served.stderr


def test_a_card_too_large_to_be_one_is_not_read(fast_export, tmp_path, mnist_test, capsys):
    """A 32 MB model.json (sparse) is refused by its size: cards are KB, and the Pi has 1 GB."""
    folder = tmp_path / "export"
    shutil.copytree(fast_export, folder)
    with open(folder / "model.json", "r+b") as f:
        f.truncate(2**25)
    picture = scan_png(tmp_path, mnist_test)
    assert "too large for a model card" in one_line_error(["predict", "--model", str(folder), str(picture)], capsys)


def test_a_layer_naming_a_missing_weight_fails_at_start(fast_export, tmp_path, mnist_test, capsys):
    folder = edited_export(fast_export, tmp_path, missing_weight, reseal=True)
    served = run_cli("serve", "--model", str(folder), "--backend", "numpy", "--port", "0")
    assert served.returncode == 2 and served.stderr.count("\n") == 1
    assert "weights.npz does not run as model.json describes it" in served.stderr


def test_cards_from_before_the_checksum_still_load(fast_export, tmp_path, mnist_test):
    from digitpi.runtime import Classifier

    folder = edited_export(fast_export, tmp_path, lambda content: content.pop(card.CHECKSUM))
    images, labels = mnist_test
    assert (Classifier.load(folder).predict(images[:100]).labels == labels[:100]).mean() > 0.95


# ---------------------------------------------------------------- predict


def test_save_input_never_replaces_what_is_not_a_file(fast_export, tmp_path, mnist_test, capsys):
    picture = scan_png(tmp_path, mnist_test)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    err = one_line_error(["predict", "--model", str(fast_export), str(picture), "--save-input", str(fifo)], capsys)
    assert "is a FIFO, not a regular file" in err and Path(fifo).is_fifo()
    link = tmp_path / "link.png"
    link.symlink_to(picture)
    err = one_line_error(["predict", "--model", str(fast_export), str(picture), "--save-input", str(link)], capsys)
    assert "is a symbolic link" in err and link.is_symlink() and picture.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    saved = tmp_path / "seen.png"  # a new file gets the umask's mode (0644 under 022), as the plots do
    assert main(["predict", "--model", str(fast_export), str(picture), "--save-input", str(saved)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert oct(saved.stat().st_mode & 0o777) == oct(0o666 & ~umask)


def test_pictures_that_are_folders_or_too_large(fast_export, tmp_path, capsys):
    err = one_line_error(["predict", "--model", str(fast_export), str(tmp_path)], capsys)
    assert err == f"digitpi: error: {tmp_path}: is a folder, not an image\n"
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_stream(9400, 9400, "RGBA"))  # a few hundred KB; 674 MB on the way to grey
    assert bomb.stat().st_size < 2**20
    err = one_line_error(["predict", "--model", str(fast_export), str(bomb)], capsys)
    assert "too large to decode (9400x9400 px RGBA needs 674 MB, the limit is 128 MB)" in err


def test_standard_input_is_bounded(fast_export, monkeypatch, capsys):
    monkeypatch.setattr(preprocess, "SETTINGS", preprocess.Settings(max_file_bytes=2**20))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bytes(2**21))))  # as `cat /dev/zero` would, unbounded
    err = one_line_error(["predict", "--model", str(fast_export), "-"], capsys)
    assert err == "digitpi: error: standard input: more than 1 MB, too large for a picture\n"


def test_float_tiff_of_one_row(fast_export, tmp_path, capsys):
    """A 2850x1 float TIFF: an answer or one line, never a traceback."""
    path = tmp_path / "row.tif"
    Image.fromarray(np.random.default_rng(0).random((1, 2850), dtype=np.float32), "F").save(path)
    code = main(["predict", "--model", str(fast_export), str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1)


# ---------------------------------------------------------------- train, data


def test_grid_needs_a_picture_extension(tmp_path, capsys, mnist_dir):
    err = one_line_error(["data", "--grid", str(tmp_path / "out")], capsys)
    assert "cannot tell the picture format" in err and ".png" in err
    assert main(["data", "--grid", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_data_dir_variable_that_is_not_mnist(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIGITPI_MIRRORS", "http://127.0.0.1:9/")  # never reaches the real mirrors
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a_file = tmp_path / "mnist.tar"
    a_file.write_bytes(b"")
    monkeypatch.setenv("DIGITPI_DATA_DIR", str(a_file))
    err = one_line_error(["data"], capsys)
    assert f"DIGITPI_DATA_DIR={a_file} is not a folder" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(mnist_dir):
        shutil.copy(mnist_dir / name, broken / name)
    (broken / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the test labels"))
    monkeypatch.setenv("DIGITPI_DATA_DIR", str(broken))
    err = one_line_error(["data"], capsys)
    assert f"{broken} (DIGITPI_DATA_DIR) does not hold mnist" in err and "checksum mismatch" in err


@pytest.mark.parametrize("sent, code, said", [(signal.SIGINT, 130, "digitpi: interrupted"),
                                               (signal.SIGTERM, -signal.SIGTERM, "digitpi: stopped by SIGTERM"),
                                               (signal.SIGHUP, -signal.SIGHUP, "digitpi: stopped by SIGHUP")],
                         ids=["ctrl-c", "kill", "hang-up"])
def test_a_stopped_command_says_so_and_leaves_nothing(sent, code: int, said: str, tmp_path):
    """Ctrl-C, `kill` (systemd, `timeout`) or a closed SSH session during training: one line, and the run
    folder it made is gone. SIGTERM and SIGHUP end the process by that signal once it has cleaned up, as
    their sender expects; before, they ended it at once, leaving the empty folder."""
    # A shell without job control starts background jobs with SIGINT ignored, and `nohup` (a CI job run
    # under it) ignores SIGHUP; children inherit both. Give the command the defaults, as a terminal would.
    # Off a terminal, progress is one line at the end of each epoch: the signal comes during the second.
    process = subprocess.Popen([sys.executable, "-m", "digitpi.cli", "train", "--recipe", "fast", "--epochs", "2",
                                "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(sent, signal.SIG_DFL))
    assert process.stdout.readline().startswith("Epoch 1/2")  # training has begun
    time.sleep(1)
    process.send_signal(sent)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code and "Traceback" not in err
    assert err.strip().splitlines()[-1] == said
    assert not (tmp_path / "run").exists()  # the folder it made, empty, is gone
