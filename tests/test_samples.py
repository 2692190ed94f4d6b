"""The samples database (`digitpi.samples`) and `digitpi samples`, on real SQLite files in tmp_path.

Samples are real MNIST test digits sent as PNG files; every field must come back as it went in,
through the database, an export folder and its import, a copy of the file, and a folder per digit.
"""

from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from digitpi import preprocess, samples
from digitpi.cli import main


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def sample_of(image: np.ndarray, label: int, origin: str = "teach", created: str = "") -> samples.Sample:
    """A sample as the server makes one: the picture, what the model saw, an answer with probabilities."""
    probabilities = tuple(float(p) for p in np.eye(10)[(label + 1) % 10] * 0.9 + 0.01)
    return samples.Sample(label=label, input=preprocess.to_mnist(png(image)), picture=png(image), picture_format="PNG",
                          origin=origin, predicted=(label + 1) % 10, probabilities=probabilities,
                          model_sha256="ab" * 32, created=created)


@pytest.fixture
def store(tmp_path):
    with samples.SampleStore(tmp_path / "samples.db") as s:
        yield s


@pytest.fixture(scope="module")
def digits(mnist_test):
    images, labels = mnist_test
    return images[:40], labels[:40]


def test_a_sample_comes_back_with_every_field(store, digits):
    images, labels = digits
    sample = sample_of(images[0], int(labels[0]))
    sample_id = store.add(sample)
    (back,) = store.samples()
    assert back.id == sample_id
    assert back.label == sample.label and back.predicted == sample.predicted and back.origin == "teach"
    assert back.picture == sample.picture and back.picture_format == "PNG" and not back.picture_reduced
    np.testing.assert_array_equal(back.input, sample.input)
    np.testing.assert_allclose(back.probabilities, sample.probabilities, atol=1e-6)
    assert back.model_sha256 == "ab" * 32 and back.created.endswith("+00:00")
    raw = sqlite3.connect(store.path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == samples.SCHEMA_VERSION


def test_stats_count_per_digit_and_model_answers(store, digits):
    images, labels = digits
    for image, label in zip(images, labels):
        store.add(sample_of(image, int(label)))
    store.add(samples.Sample(label=3, input=preprocess.to_mnist(png(images[0])), picture=png(images[0]),
                             picture_format="PNG", predicted=3))
    stats = store.stats()
    expected = np.bincount(labels, minlength=10)
    expected[3] += 1
    assert stats["per_digit"] == expected.tolist() and stats["total"] == 41
    assert stats["model_read"] == expected.tolist()  # every sample here carries the model's answer
    assert stats["model_right"] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert [row["id"] for row in store.listing(last=3)] == [39, 40, 41]
    assert {row["label"] for row in store.listing(label=7)} == {7}
    sevens = int((labels == 7).sum())
    assert store.delete(label=7) == sevens
    first_two = [row["id"] for row in store.listing()[:2]]
    assert store.delete(ids=first_two) == 2 and store.count() == 41 - 2 - sevens


def test_bad_samples_are_refused_in_one_line(store, digits):
    good = sample_of(digits[0][0], 5)
    for change, message in [({"label": 10}, "label must be a digit"), ({"origin": "guess"}, "origin must be"),
                            ({"input": np.zeros((28, 27), np.uint8)}, "uint8 28x28")]:
        with pytest.raises(samples.SamplesError, match=message):
            store.add(samples.Sample(**{**good.__dict__, **change}))
    assert store.count() == 0


def test_the_count_limit_refuses_and_writes_nothing(tmp_path, digits):
    images, labels = digits
    with samples.SampleStore(tmp_path / "small.db", samples.Limits(max_samples=5)) as small:
        for i in range(5):
            small.add(sample_of(images[i], int(labels[i])))
        with pytest.raises(samples.FullError, match="limit is 5"):
            small.add(sample_of(images[5], int(labels[5])))
        with pytest.raises(samples.FullError):
            small.add_many([sample_of(images[6], 1)])
        assert small.count() == 5


def test_a_large_picture_is_kept_reduced_and_reads_the_same(digits):
    image = digits[0][0]
    rng = np.random.default_rng(0)
    page = np.full((3000, 3000), 230, np.uint8)
    page[1000:2200, 1000:2200] = 230 - (np.asarray(Image.fromarray(image).resize((1200, 1200))) * 0.8).astype(np.uint8)
    page = (page + rng.normal(0, 6, page.shape)).clip(0, 255).astype(np.uint8)
    picture = png(page)
    assert len(picture) > samples.LIMITS.max_picture_bytes
    kept, fmt, reduced = samples.capped(picture)
    assert reduced and fmt == "JPEG" and len(kept) <= samples.LIMITS.max_picture_bytes
    assert max(Image.open(io.BytesIO(kept)).size) <= samples.LIMITS.reduced_side
    assert np.abs(preprocess.to_mnist(kept).astype(int) - preprocess.to_mnist(picture).astype(int)).mean() < 8
    assert samples.capped(png(image)) == (png(image), "PNG", False)


def test_a_file_that_is_not_a_samples_database_is_refused(tmp_path):
    (tmp_path / "notes.db").write_text("not a database at all, but long enough to look like a header")
    with pytest.raises(samples.SamplesError, match="cannot use it as a samples database"):
        samples.SampleStore(tmp_path / "notes.db")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE things (x)")
    other.commit()
    with pytest.raises(samples.SamplesError, match="schema version 0"):
        samples.SampleStore(tmp_path / "other.db")
    with pytest.raises(samples.SamplesError, match="no samples database"):
        samples.SampleStore(tmp_path / "missing.db", create=False)


def test_export_import_round_trip_loses_nothing_and_adds_nothing_twice(store, digits, tmp_path):
    images, labels = digits
    for image, label in zip(images[:12], labels[:12]):
        store.add(sample_of(image, int(label)))
    assert samples.export_folder(store, tmp_path / "export") == 12
    assert len(list((tmp_path / "export" / samples.PICTURES).iterdir())) == 12
    with pytest.raises(samples.SamplesError, match="already holds an export"):
        samples.export_folder(store, tmp_path / "export")
    store.backup(tmp_path / "copy.db")
    assert not (tmp_path / "copy.db-wal").exists()

    for source in ("export", "copy.db"):
        with samples.SampleStore(tmp_path / f"into-{source}.db") as target:
            assert samples.import_into(target, tmp_path / source) == (12, 0)
            assert samples.import_into(target, tmp_path / source) == (0, 12)
            for a, b in zip(store.samples(), target.samples()):
                assert (a.label, a.predicted, a.origin, a.created, a.picture, a.model_sha256) == \
                       (b.label, b.predicted, b.origin, b.created, b.picture, b.model_sha256)
                np.testing.assert_array_equal(a.input, b.input)
                np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
        inputs, read_labels = samples.read_samples(tmp_path / source)
        np.testing.assert_array_equal(read_labels, labels[:12])
        np.testing.assert_array_equal(inputs, store.inputs()[0])


def test_a_folder_per_digit_is_read_as_predict_reads_pictures(tmp_path, digits):
    images, labels = digits
    for i, (image, label) in enumerate(zip(images[:10], labels[:10])):
        (tmp_path / "mine" / str(label)).mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / str(label) / f"{i}.png").write_bytes(png(255 - image))  # dark ink on white paper
    inputs, read_labels = samples.read_samples(tmp_path / "mine")
    assert sorted(read_labels.tolist()) == sorted(labels[:10].tolist())
    with samples.SampleStore(tmp_path / "s.db") as target:
        assert samples.import_into(target, tmp_path / "mine") == (10, 0)
        assert samples.import_into(target, tmp_path / "mine") == (0, 10)
        assert {s.origin for s in target.samples()} == {"import"}
        assert all(s.predicted is None for s in target.samples())
        assert target.stats()["model_read"] == [0] * 10  # no model read them: none counts as read wrong
    with pytest.raises(samples.SamplesError, match="neither samples.csv"):
        samples.read_samples(tmp_path)


def test_importing_pictures_skips_one_without_a_digit_and_says_so(tmp_path, digits, capsys):
    images, labels = digits
    for i in range(4):
        (tmp_path / "mine" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / str(labels[i]) / f"{i}.png").write_bytes(png(255 - images[i]))
    blank = tmp_path / "mine" / str(labels[0]) / "blank.png"
    blank.write_bytes(png(np.full((60, 60), 255, np.uint8)))  # white paper, no digit
    (tmp_path / "mine" / str(labels[1]) / "notes.png").write_bytes(b"not a picture")
    db = tmp_path / "s.db"
    assert main(["samples", "import", str(tmp_path / "mine"), "--samples", str(db)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert len(errors) == 2 and any("blank.png" in e and "no digit" in e for e in errors)
    assert any("notes.png" in e for e in errors)
    assert "imported 4 samples" in captured.out and "skipped 2 pictures" in captured.out
    with samples.SampleStore(db, create=False) as store:
        assert store.count() == 4
    with pytest.raises(preprocess.ImageError, match="blank.png|notes.png"):  # fine-tuning reads all or stops
        samples.read_samples(tmp_path / "mine")


def test_samples_command(tmp_path, digits, capsys):
    images, labels = digits
    db = tmp_path / "samples.db"
    assert main(["samples", "stats", "--samples", str(db)]) == 2
    assert "no samples database" in capsys.readouterr().err
    with samples.SampleStore(db) as s:
        for image, label in zip(images[:6], labels[:6]):
            s.add(sample_of(image, int(label)))

    assert main(["samples", "stats", "--samples", str(db)]) == 0
    out = capsys.readouterr().out
    assert "6 samples (limit 5,000)" in out and "model read" in out
    assert main(["samples", "list", "--samples", str(db), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in listed] == labels[:6].tolist()
    assert main(["samples", "export", str(tmp_path / "out"), "--samples", str(db)]) == 0
    assert "exported 6 samples" in capsys.readouterr().out
    assert main(["samples", "export", str(tmp_path / "copy"), "--sqlite", "--samples", str(db)]) == 0
    assert (tmp_path / "copy" / samples.FILE_NAME).is_file()
    assert main(["samples", "import", str(tmp_path / "out"), "--samples", str(tmp_path / "new.db")]) == 0
    assert "imported 6 samples" in capsys.readouterr().out
    assert main(["samples", "delete", "--samples", str(db)]) == 2
    assert "say which samples" in capsys.readouterr().err
    assert main(["samples", "delete", "--all", "--samples", str(db)]) == 0
    assert "deleted 6 samples" in capsys.readouterr().out
    assert main(["samples", "import", str(tmp_path / "nothing"), "--samples", str(db)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_default_database_is_in_the_users_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert samples.default_path() == tmp_path / "data" / "digitpi" / "samples.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert samples.default_path() == tmp_path / "home" / ".local" / "share" / "digitpi" / "samples.db"
