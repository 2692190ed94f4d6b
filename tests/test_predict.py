"""`digitpi predict` as a user runs it: real PNG/JPEG files of test digits, an exported model, bad files."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitpi import preprocess
from digitpi.bench.realistic import Variant, render, row_of
from digitpi.cli import main


@pytest.fixture(scope="module")
def sure_digits(exported_dir, mnist_test) -> list[int]:
    """Indices of test digits the exported model reads right, with a clear margin, as scans on paper."""
    from digitpi import runtime

    images, labels = mnist_test
    probabilities = runtime.Classifier.load(exported_dir).predict(images[:200]).probabilities
    # > 0.8: the default recipe's label smoothing keeps even certain answers near 0.9 (median 0.92)
    return [i for i in range(200) if probabilities[i].argmax() == labels[i] and probabilities[i].max() > 0.8]


def scan(digit: np.ndarray, path: Path) -> Path:
    """A test digit as dark ink on white paper, 8x enlarged, off-centre: what a scanner gives."""
    page = Image.new("L", (400, 300), 255)
    page.paste(Image.fromarray(255 - digit).resize((224, 224), Image.BICUBIC), (150, 40))
    page.save(path)
    return path


def test_reads_a_png_and_prints_digit_probability_top(exported_dir, mnist_test, sure_digits, tmp_path, capsys):
    images, labels = mnist_test
    i = sure_digits[0]
    path = scan(images[i], tmp_path / "digit.png")
    assert main(["predict", "--model", str(exported_dir), str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{path}: {labels[i]} (") and "top 3:" in out and out.count("%") == 4


def test_json_shape_and_top(exported_dir, mnist_test, sure_digits, tmp_path, capsys):
    images, labels = mnist_test
    paths = [str(scan(images[i], tmp_path / f"{i}.png")) for i in sure_digits[:3]]
    assert main(["predict", "--model", str(exported_dir), *paths, "--json", "--top", "5", "--precision", "fp32"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == paths
    for r, i in zip(results, sure_digits):
        assert set(r) == {"image", "digit", "probability", "top"}
        assert r["digit"] == labels[i] and r["top"][0] == {"digit": r["digit"], "probability": r["probability"]}
        assert len(r["top"]) == 5 and [t["probability"] for t in r["top"]] == sorted(
            (t["probability"] for t in r["top"]), reverse=True)


def test_stdin_and_save_input(exported_dir, mnist_test, sure_digits, tmp_path, capsys, monkeypatch):
    images, labels = mnist_test
    i = sure_digits[1]
    buffer = io.BytesIO()
    Image.open(scan(images[i], tmp_path / "d.png")).save(buffer, format="JPEG", quality=80)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(buffer.getvalue())))
    saved = tmp_path / "seen" / "input.png"
    assert main(["predict", "--model", str(exported_dir), "-", "--save-input", str(saved), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["image"] == "-" and result["digit"] == labels[i]
    seen = np.asarray(Image.open(saved))
    assert seen.shape == (28, 28) and seen.dtype == np.uint8
    assert np.array_equal(seen, preprocess.to_mnist(buffer.getvalue()))  # exactly what the model saw
    assert [p.name for p in saved.parent.iterdir()] == ["input.png"]  # no temporary file left behind


def test_multi_reads_a_row(exported_dir, mnist_test, sure_digits, tmp_path, capsys):
    images, labels = mnist_test
    pick = sure_digits[2:6]
    rng = np.random.default_rng(0)
    row = tmp_path / "row.jpg"
    strip = row_of(images[pick], rng, gap=(3, 6))
    row.write_bytes(next(render(strip[None], Variant(canvas=(1100, 300), scale=(5.0, 6.0)), rng)))
    assert main(["predict", "--model", str(exported_dir), str(row), "--multi", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["text"] == "".join(str(labels[i]) for i in pick)
    [line] = result["lines"]
    assert line["text"] == result["text"] and len(line["digits"]) == 4
    assert 0 < result["probability"] == line["probability"] <= min(d["probability"] for d in line["digits"])
    lefts = [d["box"][0] for d in line["digits"]]
    assert lefts == sorted(lefts) and all(0 <= d["box"][0] < d["box"][2] <= 1100 for d in line["digits"])
    assert main(["predict", "--model", str(exported_dir), str(row), "--multi"]) == 0
    assert capsys.readouterr().out.startswith(f"{row}: {result['text']} (")


def two_line_page(images: np.ndarray, lines: list[list[int]], path: Path) -> Path:
    """Test digits printed dark on white paper, one written line per list, 150 px a digit."""
    page = Image.new("L", (200 * max(map(len, lines)) + 100, 220 * len(lines) + 100), 255)
    for row, picks in enumerate(lines):
        for k, i in enumerate(picks):
            big = Image.fromarray(255 - images[i]).resize((150, 150), Image.BICUBIC)
            page.paste(big, (60 + 200 * k, 60 + 220 * row))
    page.save(path)
    return path


def test_multi_reads_a_page_line_by_line(exported_dir, mnist_test, sure_digits, tmp_path, capsys):
    images, labels = mnist_test
    lines = [sure_digits[6:10], sure_digits[10:13]]
    page = two_line_page(images, lines, tmp_path / "page.png")
    assert main(["predict", "--model", str(exported_dir), str(page), "--multi", "--json", "--top", "2"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    expected = ["".join(str(labels[i]) for i in picks) for picks in lines]
    assert result["text"] == "\n".join(expected) and [line["text"] for line in result["lines"]] == expected
    for row, line in enumerate(result["lines"]):
        for k, digit in enumerate(line["digits"]):
            assert set(digit) == {"digit", "probability", "top", "box"} and len(digit["top"]) == 2
            left, top, right, bottom = digit["box"]  # inside the 150-px square the digit was printed in
            assert 60 + 200 * k <= left < right <= 210 + 200 * k and 60 + 220 * row <= top < bottom <= 210 + 220 * row
    assert main(["predict", "--model", str(exported_dir), str(page), "--multi"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{page}: {text} ({100 * line['probability']:.1f} %)  per digit: "
        + ", ".join(f"{d['digit']} {100 * d['probability']:.1f} %" for d in line["digits"])
        for text, line in zip(expected, result["lines"])]


def test_every_picture_gets_an_answer(exported_dir, mnist_test, sure_digits, tmp_path, capsys):
    """A blank page and a non-image in the middle of a batch: every good file is answered, in order,
    each failure gets its own line (or JSON record), and the exit status says something failed."""
    images, labels = mnist_test
    good = [scan(images[i], tmp_path / f"{i}.png") for i in sure_digits[:2]]
    blank = tmp_path / "blank.png"
    Image.new("L", (300, 200), 255).save(blank)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    files = [str(good[0]), str(blank), str(notes), str(good[1])]
    assert main(["predict", "--model", str(exported_dir), *files, "--json"]) == 2
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == files
    assert [r.get("digit") for r in records] == [labels[sure_digits[0]], None, None, labels[sure_digits[1]]]
    assert "no digit found" in records[1]["error"] and "not an image" in records[2]["error"]
    saved = tmp_path / "seen.png"
    assert main(["predict", "--model", str(exported_dir), *files, "--save-input", str(saved)]) == 2
    captured = capsys.readouterr()
    assert [line.split(" (")[0] for line in captured.out.splitlines()] == [
        f"{good[0]}: {labels[sure_digits[0]]}", f"{good[1]}: {labels[sure_digits[1]]}"]
    assert captured.err.splitlines() == [f"digitpi: error: {blank}: no digit found (the image is blank)",
                                         f"digitpi: error: {notes}: not an image (no known image format)"]
    assert np.asarray(Image.open(saved)).shape == (28, 56)  # the two digits that were read


def truncated_png(tmp_path: Path, mnist_test) -> Path:
    png = (scan(mnist_test[0][0], tmp_path / "whole.png")).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    return tmp_path / "cut.png"


@pytest.mark.parametrize("make, message", [
    (lambda tmp, mnist: (tmp / "notes.txt", (tmp / "notes.txt").write_text("7 is a digit\n"))[0], "not an image"),
    (lambda tmp, mnist: (tmp / "empty.png", (tmp / "empty.png").write_bytes(b""))[0], "empty file"),
    (truncated_png, "cannot decode|not an image"),
    (lambda tmp, mnist: (tmp / "white.png", Image.new("L", (300, 200), 255).save(tmp / "white.png"))[0],
     "no digit found"),
    (lambda tmp, mnist: tmp / "missing.png", "no such file"),
])
def test_bad_input_is_one_line_error(make, message, fast_export, mnist_test, tmp_path, capsys):
    path = make(tmp_path, mnist_test)
    saved = tmp_path / "seen.png"
    assert main(["predict", "--model", str(fast_export), str(path), "--save-input", str(saved)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not saved.exists()
    err = captured.err.strip()
    assert err.startswith(f"digitpi: error: {path}: ") and "\n" not in err
    assert re.search(message, err)


def test_save_input_never_replaces_a_picture_being_read(fast_export, mnist_test, tmp_path, capsys, monkeypatch):
    photo = scan(mnist_test[0][0], tmp_path / "photo.png")
    before = photo.read_bytes()
    assert main(["predict", "--model", str(fast_export), str(photo), "--save-input", str(photo)]) == 2
    assert main(["predict", "--model", str(fast_export), str(photo), "--save-input",
                 str(tmp_path / "missing" / ".." / "photo.png")]) == 2  # the same file, by a name not there yet
    with open(photo, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert main(["predict", "--model", str(fast_export), "-", "--save-input", str(photo)]) == 2
    assert capsys.readouterr().err.count("is one of the pictures to read") == 3
    assert photo.read_bytes() == before and not (tmp_path / "missing").exists()


def test_the_runtime_sends_onnxruntime_no_telemetry(fast_export, mnist_test, tmp_path):
    """onnxruntime 1.29+ queues events about the machine for Microsoft under ~/.cache unless told not to."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    done = subprocess.run([sys.executable, "-m", "digitpi", "predict", "--model", str(fast_export),
                           str(scan(mnist_test[0][0], tmp_path / "d.png"))], env={**env, "HOME": str(home)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (home / ".cache" / "Microsoft").exists()


def test_no_traceback_from_the_real_command(fast_export, mnist_test, tmp_path):
    cut = truncated_png(tmp_path, mnist_test)
    done = subprocess.run([sys.executable, "-m", "digitpi.cli", "predict", "--model", str(fast_export), "-"],
                          input=cut.read_bytes(), capture_output=True)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().count("\n") == 1 and b"Traceback" not in done.stderr
    assert done.stderr.startswith(b"digitpi: error: standard input: ")


def test_bad_flags(fast_export, tmp_path, capsys):
    assert main(["predict", "--model", str(fast_export), "a.png", "--top", "0"]) == 2
    assert main(["predict", "--model", str(tmp_path / "nope"), "a.png"]) == 2
    assert main(["predict", "--model", str(fast_export), "-", "-"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(e.startswith("digitpi: error: ") for e in errors)
