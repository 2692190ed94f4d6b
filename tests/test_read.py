"""`digitpi.read`: one call from a picture to its digit (or a page to its lines), with a real exported model:
the same answer `reading.read` gives `digitpi predict` and `digitpi serve`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import digitpi
from digitpi import UserError, preprocess, reading
from digitpi.bench.realistic import row_of
from digitpi.runtime import Classifier

SURE = [3, 2, 1, 18, 4]  # test digits 0, 1, 2, 3, 4: a trained model reads each right on its own


def test_reads_one_digit_as_the_runtime_does(fast_export, mnist_test, tmp_path) -> None:
    images, labels = mnist_test
    path = tmp_path / "digit.png"
    Image.fromarray(255 - images[SURE[0]]).resize((140, 140)).save(path)  # dark ink on paper, as a scan
    digit = digitpi.read(path, model=fast_export)
    seen = preprocess.to_mnist(path)
    expected = Classifier.load(fast_export).predict(seen[None])
    assert digit.index == expected.labels[0] == labels[SURE[0]] and digit.label == str(labels[SURE[0]])
    assert digit.probability == pytest.approx(float(expected.probabilities[0].max()))
    assert len(digit.probabilities) == 10 and sum(digit.probabilities) == pytest.approx(1)
    assert np.array_equal(digit.image, seen) and digit.box is None
    classifier = Classifier.load(fast_export)  # loaded once, for many pictures: the same answer
    assert digitpi.read(path, model=classifier).top(3) == digit.top(3)


def test_reads_a_page_line_by_line(fast_export, mnist_test) -> None:
    images, labels = mnist_test
    rng = np.random.default_rng(0)
    rows = [row_of(images[SURE[:3]], rng, gap=(4, 8)), row_of(images[SURE[3:]], rng, gap=(4, 8))]
    page = np.zeros((28 * 2 + 3 * 12, max(r.shape[1] for r in rows)), np.uint8)  # white ink on black, 12 px apart
    for k, row in enumerate(rows):
        page[12 + k * 40:12 + k * 40 + 28, :row.shape[1]] = row
    read = digitpi.read(page, model=fast_export, page=True)
    written = "".join(map(str, labels[SURE[:3]])) + "\n" + "".join(map(str, labels[SURE[3:]]))
    assert read.text == written
    first, second = read.lines
    assert [r.box[0] for r in first] == sorted(r.box[0] for r in first)  # left to right
    assert max(r.box[3] for r in first) <= min(r.box[1] for r in second)  # the second line below the first
    assert [r.image.tolist() for line in read.lines for r in line] == [  # what `predict --multi` would read
        image.tolist() for line in reading.look(page, page=True, classifier=Classifier.load(fast_export))
        for image, _ in line]


def test_without_a_model_it_says_how_to_get_one(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"no model in runs/default/export .*: run `make main` there, or pass model="):
        digitpi.read(np.zeros((28, 28), np.uint8))


def test_import_digitpi_is_light_and_read_needs_no_torch(fast_export, mnist_test, tmp_path) -> None:
    Image.fromarray(mnist_test[0][SURE[0]]).save(tmp_path / "digit.png")
    code = ("import sys, digitpi\n"
            "heavy = ('numpy', 'torch', 'PIL', 'onnxruntime')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
            f"print(digitpi.read({str(tmp_path / 'digit.png')!r}, model={str(fast_export)!r}).label)\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[]", str(mnist_test[1][SURE[0]]), "False"]
