"""The samples database (`digitpi.samples`) and `digitpi samples`, on real SQLite files in tmp_path.

Samples are real MNIST test digits sent as PNG files; every field must come back as it went in,
through the database, an export folder and its import, a copy of the file, and a folder per digit.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

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


def test_the_same_sample_twice_is_stored_once_and_answered_with_its_id(store, digits):
    """Two posts of one picture in the same millisecond: the second is the first (no 500 for a missing id)."""
    sample = sample_of(digits[0][0], 5, created="2026-12-06T12:00:00.000+00:00")
    assert store.add(sample) == store.add(sample) and store.count() == 1


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
    (tmp_path / "mine" / samples.PICTURES).mkdir(parents=True)
    (tmp_path / "mine" / samples.PICTURES / "000002.png").write_text("my own")  # the user's, where #2 would go
    (tmp_path / "outside.txt").write_text("kept")
    (tmp_path / "mine" / samples.PICTURES / "000001.png").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(samples.SamplesError, match="000001.png exists already"):
        samples.export_folder(store, tmp_path / "mine")
    assert (tmp_path / "outside.txt").read_text() == "kept"
    assert sorted(p.name for p in (tmp_path / "mine").rglob("*")) == ["000001.png", "000002.png", samples.PICTURES]
    with pytest.raises(samples.SamplesError, match="more than 5 samples"):
        samples.export_rows(tmp_path / "export", limit=5)  # a CSV too long for any database: refused as it is read

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
    with pytest.raises(preprocess.ImageError, match="blank.png|notes.png"):  # without `skipped`: all or nothing
        samples.read_samples(tmp_path / "mine")


def test_an_import_that_finds_no_sample_leaves_no_database(tmp_path, capsys):
    """Pictures that all hold no digit, or a samples database that holds none, imported into a new
    database: a clear error, and no empty database (nor its folder) is left behind."""
    (tmp_path / "mine" / "3").mkdir(parents=True)
    for i, level in enumerate((255, 250)):
        (tmp_path / "mine" / "3" / f"{i}.png").write_bytes(png(np.full((60, 60), level, np.uint8)))
    with samples.SampleStore(tmp_path / "none.db", create=True):
        pass
    for source, says in (("mine", "none of the 2 pictures in .*mine holds a digit"),
                         ("none.db", ".*none.db holds none")):
        db = tmp_path / "new" / "s.db"
        assert main(["samples", "import", str(tmp_path / source), "--samples", str(db)]) == 2
        assert re.search(f"no sample to import: {says}", capsys.readouterr().err.splitlines()[-1])
        assert not (tmp_path / "new").exists()


def test_a_huge_file_among_the_pictures_is_skipped_without_reading_it_whole(tmp_path, digits, capsys):
    """A 300 MB file that is no picture (sparse: it costs no disk) in a folder per digit: one line, the
    others imported, and it is never read into memory."""
    images, labels = digits
    (tmp_path / "mine" / str(labels[0])).mkdir(parents=True)
    (tmp_path / "mine" / str(labels[0]) / "a.png").write_bytes(png(255 - images[0]))
    with open(tmp_path / "mine" / str(labels[0]) / "video.png", "wb") as f:
        f.truncate(300 * 2**20)
    tracemalloc.start()
    try:
        assert main(["samples", "import", str(tmp_path / "mine"), "--samples", str(tmp_path / "s.db")]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "video.png" in captured.err
    assert "imported 1 samples" in captured.out
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB traced"


def damaged(path: Path) -> None:
    """Overwrite the middle third of a database file with noise, its header page intact: an SD card's damage."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(np.random.default_rng(0).integers(0, 256, size // 3, dtype=np.uint8).tobytes())


def test_a_damaged_database_is_one_line_for_every_command(tmp_path, digits, capsys):
    images, labels = digits
    db = tmp_path / "samples.db"
    with samples.SampleStore(db) as s:
        s.add_many([sample_of(image, int(label)) for image, label in zip(images, labels)])
    damaged(db)
    for argv in (["stats"], ["list"], ["export", str(tmp_path / "out")], ["export", str(tmp_path / "copy"), "--sqlite"],
                 ["delete", "--all"], ["import", str(tmp_path / "nothing")]):
        assert main(["samples", *argv, "--samples", str(db)]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "malformed" in err, (argv, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "copy").exists()  # no half-made export


def test_another_programs_lock_is_one_line_after_the_wait(tmp_path, digits):
    images, labels = digits
    db = tmp_path / "samples.db"
    with samples.SampleStore(db, samples.Limits(busy_seconds=0.2)) as store:
        store.add(sample_of(images[0], int(labels[0])))
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # a sqlite3 shell left in a transaction
        for write in (lambda: store.add(sample_of(images[1], int(labels[1]))), lambda: store.delete(label=1)):
            with pytest.raises(samples.StoreError, match="locked.*another program holds it"):
                write()
        assert store.count() == 1  # reading goes on beside the writer (WAL)
        other.execute("ROLLBACK")
        store.add(sample_of(images[1], int(labels[1])))
        assert store.count() == 2


def test_a_database_of_another_shape_is_refused(tmp_path, digits):
    """Written by hand or by another program: columns missing, or rows that break the schema's checks."""
    raw = sqlite3.connect(tmp_path / "columns.db")
    raw.executescript("CREATE TABLE samples (id INTEGER PRIMARY KEY, label INTEGER); PRAGMA user_version = 1;")
    raw.close()
    with pytest.raises(samples.SamplesError, match="columns id, label"):
        samples.SampleStore(tmp_path / "columns.db")
    with samples.SampleStore(tmp_path / "rows.db") as s:
        s.add(sample_of(digits[0][0], 4))
    raw = sqlite3.connect(tmp_path / "rows.db")
    raw.executescript("PRAGMA ignore_check_constraints = 1; UPDATE samples SET label = 12;")
    raw.close()
    with pytest.raises(samples.SamplesError, match="1 rows with a label that is not a digit"):
        samples.SampleStore(tmp_path / "rows.db")


def test_reading_needs_no_right_to_write(tmp_path, digits):
    """A database another user owns (the Pi's service user), in a folder only they may write: `stats`,
    `list` and `export` read it; `delete` says it cannot write."""
    shared = Path(tempfile.mkdtemp(prefix="digitpi-shared-"))  # not under pytest's tmp_path: that is private
    try:
        with samples.SampleStore(shared / "samples.db") as s:
            s.add(sample_of(digits[0][0], int(digits[1][0])))
        shared.chmod(0o755)
        (shared / "samples.db").chmod(0o644)
        out = Path(tempfile.mkdtemp(prefix="digitpi-out-"))
        out.chmod(0o777)
        other = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        if not other:
            shared.chmod(0o555)  # ourselves, without the right to write the folder or the file
            (shared / "samples.db").chmod(0o444)

        def digitpi(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run([*other, sys.executable, "-m", "digitpi", "samples", *argv, "--samples",
                                   str(shared / "samples.db")], capture_output=True, text=True, cwd=out)

        assert "1 samples" in digitpi("stats").stdout
        assert digitpi("list", "--json").returncode == 0
        assert digitpi("export", str(out / "ex")).returncode == 0 and (out / "ex" / samples.EXPORT_CSV).is_file()
        refused = digitpi("delete", "--all")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "readonly" in refused.stderr
        with samples.SampleStore(shared / "samples.db", writable=False) as s:
            assert s.count() == 1
        # A server killed mid-work leaves samples in its -wal that only a writer can fold in: said, not skipped
        shared.chmod(0o755)
        (shared / "samples.db").chmod(0o644)
        subprocess.run([sys.executable, "-c", "import os, sys, numpy as np\nfrom digitpi import samples\n"
                        f"s = samples.SampleStore({str(shared / 'samples.db')!r})\n"
                        "s.add(samples.Sample(label=3, input=np.zeros((28, 28), np.uint8), picture=b'x', "
                        "picture_format='PNG'))\nos._exit(0)"], check=True)
        (shared / "samples.db-shm").chmod(0o600)  # the server's, unreadable to others
        (shared / "samples.db-wal").chmod(0o644)
        if not other:
            shared.chmod(0o555)
        stale = digitpi("stats")
        assert stale.returncode == 2 and "samples.db-wal holds changes" in stale.stderr, stale.stderr
    finally:
        for folder in (shared, out):
            folder.chmod(0o755)
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("change,words", [
    ({"label": "12"}, "label must be a digit"),
    ({"input": "../elsewhere.png"}, "is not a file in"),
    ({"picture": "/dev/zero"}, "is not a file in"),
    ({"input": "big.png"}, "is 29x28, not 28x28"),
    ({"input": "bomb.png"}, "image too large"),
])
def test_an_export_folder_is_checked_as_the_database_checks_samples(store, digits, tmp_path, change, words, capsys):
    """An export from someone else: its CSV may name any file and hold any label."""
    images, labels = digits
    for image, label in zip(images[:3], labels[:3]):
        store.add(sample_of(image, int(label)))
    folder = tmp_path / "export"
    samples.export_folder(store, folder)
    Image.new("L", (29, 28)).save(folder / "big.png")
    Image.new("1", (20_000, 20_000)).save(folder / "bomb.png")  # 400 megapixels in a few KB
    (tmp_path / "elsewhere.png").write_bytes(png(images[0]))
    rows = samples.export_rows(folder)
    rows[1].update(change)
    with open(folder / samples.EXPORT_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, samples.CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(samples.SamplesError, match=f"line 3: .*{words}"):
        samples.read_samples(folder)
    assert main(["samples", "import", str(folder), "--samples", str(tmp_path / "new.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    # an export is one piece, written by digitpi: a bad row refuses it whole, and leaves no empty database
    assert not list(tmp_path.glob("new.db*"))


def test_a_refused_import_leaves_nothing_it_made_and_no_sample_goes(tmp_path, digits, monkeypatch, capsys):
    """A refused import into a new database removes it, the folders made for it, and through a
    symbolic link the file SQLite made where it points; a sample another program added meanwhile
    keeps the database."""
    missing = tmp_path / "nothing"
    assert main(["samples", "import", str(missing), "--samples", str(tmp_path / "new" / "sub" / "s.db")]) == 2
    (tmp_path / "link.db").symlink_to(tmp_path / "target.db")
    assert main(["samples", "import", str(missing), "--samples", str(tmp_path / "link.db")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.db"]
    assert capsys.readouterr().err.count("\n") == 2

    images, labels = digits

    def another_program_adds_then_the_import_fails(store, source, skipped=None):
        with samples.SampleStore(store.path) as other:
            other.add(sample_of(images[0], int(labels[0])))
        raise samples.SamplesError("refused")

    monkeypatch.setattr(samples, "import_into", another_program_adds_then_the_import_fails)
    db = tmp_path / "shared.db"
    assert main(["samples", "import", str(missing), "--samples", str(db)]) == 2
    with samples.SampleStore(db, create=False) as store:
        assert store.count() == 1


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
    copied = (tmp_path / "copy" / samples.FILE_NAME).read_bytes()
    assert main(["samples", "export", str(tmp_path / "copy"), "--sqlite", "--samples", str(db)]) == 2
    assert "exists already" in capsys.readouterr().err  # an older copy is never replaced
    assert (tmp_path / "copy" / samples.FILE_NAME).read_bytes() == copied
    for last in ("0", "-5"):
        assert main(["samples", "list", "--last", last, "--samples", str(db)]) == 2
        assert "--last must be at least 1" in capsys.readouterr().err
    assert main(["samples", "list", "--last", "1" + "0" * 30, "--samples", str(db), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6
    assert [p.name for p in tmp_path.glob("samples.db*")] == ["samples.db"]  # reading left no -wal, no -shm
    with samples.SampleStore(db, writable=False) as reader, pytest.raises(samples.StoreError, match="readonly"):
        reader.delete()
    assert main(["samples", "import", str(tmp_path / "out"), "--samples", str(tmp_path / "new.db")]) == 0
    assert "imported 6 samples" in capsys.readouterr().out
    assert main(["samples", "delete", "--samples", str(db)]) == 2
    assert "say which samples" in capsys.readouterr().err
    assert main(["samples", "delete", "--all", "--samples", str(db)]) == 0
    assert "deleted 6 samples" in capsys.readouterr().out
    assert main(["samples", "import", str(tmp_path / "nothing"), "--samples", str(db)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and db.is_file()  # refused: the database it did not make stays


def test_the_default_database_is_in_the_users_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert samples.default_path() == tmp_path / "data" / "digitpi" / "samples.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert samples.default_path() == tmp_path / "home" / ".local" / "share" / "digitpi" / "samples.db"
