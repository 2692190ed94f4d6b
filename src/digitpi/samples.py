"""The digits a user teaches digitpi, kept in one SQLite file: written by `digitpi serve --collect`,
read by `digitpi samples` and `digitpi finetune`, carried between the Pi and the PC by export/import.

One row per sample: the picture as received (capped), the 28x28 image the model saw, the label the
user gave, the model's answer and probabilities, the SHA-256 of the model file that answered (from
its model card), the time. Python's `sqlite3`, numpy and Pillow only: this runs on the Raspberry Pi.

A Pi loses power without warning, so the file is opened in WAL mode with `synchronous=FULL`: a
sample is on disk when `add` returns (the server answers only then), and a write cut short is rolled
back when the file is next opened; it never leaves a damaged database.

Where samples come from, and what `read_samples` (fine-tuning) takes:
    a samples database         FILE.db, as the server writes it or `export --sqlite` copies it
    an export folder           DIR/samples.csv, DIR/pictures/ID.*, DIR/inputs/ID.png (`digitpi samples export`)
    a folder per digit         DIR/0/*.png ... DIR/9/*.jpg: any pictures, read as `digitpi predict` reads them
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from digitpi import UserError, files, one_line, preprocess
from digitpi.contract import IMAGE_SIZE, NUM_CLASSES

FILE_NAME = "samples.db"  # in the user's data folder unless `--samples PATH` says otherwise
SCHEMA_VERSION = 1  # PRAGMA user_version of a samples database; a file with another is refused
ORIGINS = ("correction", "teach", "api", "import")  # the page's "it's a 4", its teach round, a script, a file
EXPORT_CSV = "samples.csv"  # an export folder's index, written last: a folder with it is complete
PICTURES, INPUTS = "pictures", "inputs"  # an export folder's subfolders: as received / as the model saw them
INPUT_BYTES = IMAGE_SIZE * IMAGE_SIZE
EXTENSIONS = {"JPEG": ".jpg"}  # else the first extension Pillow registers for the format
DIGIT_FOLDERS = tuple(str(d) for d in range(NUM_CLASSES))

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,                          -- ISO 8601, UTC, milliseconds
    label INTEGER NOT NULL CHECK (label BETWEEN 0 AND {NUM_CLASSES - 1}),
    predicted INTEGER CHECK (predicted BETWEEN 0 AND {NUM_CLASSES - 1}),  -- NULL: never read by a model
    probabilities TEXT,                             -- JSON list of {NUM_CLASSES} floats, or NULL
    model_sha256 TEXT,                              -- of the model file that answered, from its card
    origin TEXT NOT NULL,                           -- one of {", ".join(ORIGINS)}
    picture BLOB NOT NULL,                          -- as received, or reduced when over the cap
    picture_format TEXT NOT NULL,                   -- Pillow's name for it: PNG, JPEG, ...
    picture_reduced INTEGER NOT NULL DEFAULT 0,     -- 1: over the cap, kept as a smaller grey JPEG
    input BLOB NOT NULL CHECK (length(input) = {INPUT_BYTES}),  -- the 28x28 uint8 the model saw, row-major
    UNIQUE (created, label, input)                  -- importing the same export twice adds nothing
);
CREATE INDEX IF NOT EXISTS samples_label ON samples (label);
"""
META_COLUMNS = "id, created, label, predicted, probabilities, model_sha256, origin, picture_format, " \
               "picture_reduced, length(picture)"


@dataclass(frozen=True)
class Limits:
    max_samples: int = 5_000  # a few hundred teach a writer; more only fills a Pi's SD card
    max_picture_bytes: int = 256 * 1024  # a larger picture is kept as a grey JPEG, reduced until it fits
    reduced_side: int = preprocess.SETTINGS.load_side  # px: preprocessing never reads more of a picture
    busy_seconds: float = 30.0  # how long to wait for another program's lock before saying it is locked


LIMITS = Limits()


class SamplesError(UserError):
    """A samples file or folder that cannot be used; the message is one line that says why."""


class FullError(SamplesError):
    """The database holds `Limits.max_samples` samples: export and delete some first."""


class StoreError(SamplesError):
    """The database failed under a command: damaged (an SD card cut off mid-write by the OS, not by
    SQLite), locked by another program past the wait, or not writable. Not the request's fault: a
    server answers 503."""


def store_error(path: Path, e: sqlite3.Error) -> StoreError:
    text = str(e)
    hint = ("another program holds it (a sqlite3 shell, a database browser): close it and try again"
            if "locked" in text or "busy" in text else
            f"`sqlite3 {path} .recover` may save what is left" if "malformed" in text or "not a database" in text
            else "")
    return StoreError(f"{path}: {text}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class Sample:
    label: int  # what the user says the digit is
    input: np.ndarray  # uint8 (28, 28): what the model saw
    picture: bytes  # as received (capped)
    picture_format: str  # Pillow's format name of `picture`
    origin: str = "api"  # one of ORIGINS
    predicted: int | None = None  # the model's answer when the sample was taken
    probabilities: tuple[float, ...] | None = None  # the model's probability of each digit
    model_sha256: str | None = None  # the model file that answered
    created: str = ""  # ISO 8601 UTC; empty: now
    picture_reduced: bool = False  # True: `picture` is a reduced copy of a larger upload
    id: int | None = None  # the row, once stored


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def default_path() -> Path:
    """$XDG_DATA_HOME/digitpi/samples.db, else ~/.local/share/digitpi/samples.db (the XDG default)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "digitpi" / FILE_NAME


@contextlib.contextmanager
def removed_if_left_empty(path: Path) -> Iterator[None]:
    """A database that the block creates at `path` goes again, with the folders made for it, when the
    block fails or is stopped (a refused `samples import`, or one that found no sample) and it holds
    no sample: not one another program added meanwhile, nor a batch already committed. Through a
    symbolic link, SQLite creates the file it points to; the files SQLite keeps beside it that were
    there before stay."""
    real = Path(os.path.realpath(path))
    if real.exists():
        yield
        return
    made = [name for name in (real, *(Path(f"{real}{end}") for end in ("-wal", "-shm", "-journal")))
            if not os.path.lexists(name)]
    folders = [folder for folder in real.parents if not folder.exists()]  # the nearest first
    try:
        yield
    except BaseException:
        if holds_no_sample(real):
            for name in made:
                with contextlib.suppress(OSError):
                    name.unlink(missing_ok=True)
            for folder in folders:
                with contextlib.suppress(OSError):  # only an empty folder goes
                    folder.rmdir()
        raise


def reading(path: Path) -> list[str]:
    """The URIs to read the database at `path` through, in turn. A user who may write the file and its
    folder opens it read-write (`SampleStore` refuses writes with `query_only`): the last connection to close
    removes the -wal and -shm files beside a WAL database, which `mode=ro` would leave behind after
    every `samples list`; others read with `mode=ro`."""
    uri = path.resolve().as_uri()
    may_write = os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)
    return [f"{uri}?mode=rw"] * may_write + [f"{uri}?mode=ro"]


def holds_no_sample(path: Path) -> bool:
    """Whether the database at `path` is missing or holds no sample; False when that cannot be told."""
    if not path.exists():
        return True
    try:
        with contextlib.closing(sqlite3.connect(reading(path)[0], uri=True, timeout=1)) as db:
            return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0
    except sqlite3.Error as e:
        return str(e).startswith("no such table")  # created, its schema not yet written


# ---------------------------------------------------------------- pictures


def picture_format(picture: bytes) -> str:
    """Pillow's format name of encoded picture bytes ("PNG", "JPEG", ...), read from the header only."""
    try:
        with Image.open(io.BytesIO(picture)) as image:
            return image.format or "unknown"
    except Exception:  # Pillow raises many types on foreign bytes; the caller has decoded it already
        return "unknown"


def extension(fmt: str) -> str:
    if fmt in EXTENSIONS:
        return EXTENSIONS[fmt]
    return next((ext for ext, name in Image.registered_extensions().items() if name == fmt), ".bin")


def capped(picture: bytes | Path, limits: Limits = LIMITS) -> tuple[bytes, str, bool]:
    """(bytes, format, reduced): the picture (its bytes, or a file that is never read whole when it is
    larger) as received when it fits `max_picture_bytes`, else a grey JPEG of it, upright, its longer
    side `reduced_side` or halved until it fits."""
    if isinstance(picture, Path) and picture.stat().st_size <= limits.max_picture_bytes:
        picture = picture.read_bytes()
    if isinstance(picture, bytes) and len(picture) <= limits.max_picture_bytes:
        return picture, picture_format(picture), False
    side = limits.reduced_side
    while True:
        gray = preprocess.gray_array(preprocess.load_image(picture, side=side), side)
        buffer = io.BytesIO()
        Image.fromarray(gray.clip(0, 255).astype(np.uint8), "L").save(buffer, format="JPEG", quality=90)
        if buffer.tell() <= limits.max_picture_bytes or side <= IMAGE_SIZE:
            return buffer.getvalue(), "JPEG", True
        side //= 2


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def checked(sample: Sample) -> Sample:
    """`sample` after the checks the schema also makes, as one-line errors rather than SQLite's."""
    if not (isinstance(sample.label, (int, np.integer)) and 0 <= sample.label < NUM_CLASSES):
        raise SamplesError(f"label must be a digit 0-{NUM_CLASSES - 1}, got {sample.label!r}")
    if sample.origin not in ORIGINS:
        raise SamplesError(f"origin must be one of {', '.join(ORIGINS)}, got {sample.origin!r}")
    if sample.input.shape != (IMAGE_SIZE, IMAGE_SIZE) or sample.input.dtype != np.uint8:
        raise SamplesError(f"a sample's input must be uint8 {IMAGE_SIZE}x{IMAGE_SIZE}, got "
                           f"{sample.input.dtype} {sample.input.shape}")
    if sample.probabilities is not None and len(sample.probabilities) != NUM_CLASSES:
        raise SamplesError(f"probabilities must hold {NUM_CLASSES} values")
    return sample


# ---------------------------------------------------------------- the database


COLUMNS = ("id", "created", "label", "predicted", "probabilities", "model_sha256", "origin", "picture",
           "picture_format", "picture_reduced", "input")
# Rows that break the schema's checks: only a file written by hand (PRAGMA ignore_check_constraints) holds any
BROKEN_ROWS = (f"SELECT count(*) FROM samples WHERE label NOT BETWEEN 0 AND {NUM_CLASSES - 1} "
               f"OR predicted NOT BETWEEN 0 AND {NUM_CLASSES - 1} OR length(input) != {INPUT_BYTES}")


class SampleStore:
    """One samples database. Safe to share between a server's threads: one connection, one lock;
    other processes (`digitpi samples list` while the server runs) read it side by side (WAL).
    `writable=False` opens it read-only: a database the Pi's service user owns can be read by anyone
    who may read the file. Every SQLite failure is a one-line `SamplesError`."""

    def __init__(self, path: str | Path, limits: Limits = LIMITS, create: bool = True, writable: bool = True) -> None:
        self.path = Path(path)
        self.limits = limits
        self.lock = threading.Lock()
        if not self.path.is_file():
            if not create or not writable:
                raise SamplesError(f"no samples database {self.path}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SamplesError(f"cannot create {self.path.parent}: {e.strerror}") from None
        try:
            self.open(writable)
        except sqlite3.Error as e:  # not a database, a read-only folder, another program's file, damage
            raise SamplesError(f"{self.path}: cannot use it as a samples database ({e})") from None

    def open(self, writable: bool) -> None:
        """Connect (autocommit: every transaction below is an explicit BEGIN ... COMMIT) and check the
        file. Read-only (`reading`, then `query_only`), `mode=ro` shares the WAL's -shm file with a
        server writing the database; when no one has it open there is no -shm, none can be made in a
        folder we may not write, and `immutable=1` reads the file as it is."""
        tries = [str(self.path)] if writable else [*reading(self.path), f"{self.path.resolve().as_uri()}?immutable=1"]
        for where in tries:
            self.db = sqlite3.connect(where, timeout=self.limits.busy_seconds, isolation_level=None,
                                      check_same_thread=False, uri=not writable)
            try:
                self.setup(writable)
                return
            except sqlite3.Error as e:
                self.db.close()
                no_shm = (getattr(e, "sqlite_errorname", None) or "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN"))
                if where == tries[-1] or not no_shm:
                    raise
                if where.endswith("?mode=rw"):
                    continue
                wal = Path(f"{self.path}-wal")
                if wal.exists() and wal.stat().st_size:  # immutable=1 would read the file without them
                    raise sqlite3.OperationalError(f"{wal.name} holds changes not yet in the file, which only a "
                                                   "user who may write its folder can read (its owner)") from None

    def setup(self, writable: bool) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and (version != SCHEMA_VERSION or "samples" not in tables):
            raise sqlite3.DatabaseError(f"schema version {version}, tables {', '.join(sorted(tables))}; "
                                        f"this digitpi reads version {SCHEMA_VERSION}")
        if tables:
            columns = tuple(row[1] for row in self.db.execute("PRAGMA table_info(samples)"))
            if columns != COLUMNS:
                raise sqlite3.DatabaseError(f"its samples table has columns {', '.join(columns)}")
            broken = self.db.execute(BROKEN_ROWS).fetchone()[0]
            if broken:
                raise sqlite3.DatabaseError(f"{broken:,} rows with a label that is not a digit or an input "
                                            f"that is not {IMAGE_SIZE}x{IMAGE_SIZE}: written by hand?")
        if not writable:
            self.db.execute("PRAGMA query_only = ON")
            return
        self.db.execute("PRAGMA journal_mode = WAL")  # readers and the writer side by side; atomic commits
        self.db.execute("PRAGMA synchronous = FULL")  # each commit reaches the disk before add() returns
        if not tables:
            self.db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    @contextlib.contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock (a server's threads share it and its transaction); SQLite's
        failures (damage, another program's lock) as a one-line `StoreError`. Waiting for the lock and
        then for SQLite's share one deadline, `busy_seconds`: requests queued behind a locked file
        each get their answer in time, not one `busy_seconds` after another."""
        deadline = time.monotonic() + self.limits.busy_seconds
        if not self.lock.acquire(timeout=self.limits.busy_seconds):
            raise StoreError(f"{self.path}: busy for {self.limits.busy_seconds:g} s (database is locked); "
                             "another program may hold it: try again")
        try:
            self.db.execute(f"PRAGMA busy_timeout = {max(1, round(1000 * (deadline - time.monotonic())))}")
            yield self.db
        except sqlite3.Error as e:
            raise store_error(self.path, e) from None
        finally:
            self.lock.release()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- writing

    def add(self, sample: Sample) -> int:
        """Store one sample; returns its id once it is on disk, or the stored one's if the same sample
        (time, label and input: the same picture posted twice in a millisecond) is there already.
        Refuses (FullError) at `max_samples`."""
        sample = replace(sample, created=sample.created or now())
        (sample_id,) = self.add_many([sample])
        if sample_id is None:
            (sample_id,), = self.fetch("SELECT id FROM samples WHERE created = ? AND label = ? AND input = ?",
                                       (sample.created, int(sample.label), sample.input.tobytes()))
        return sample_id

    def add_many(self, samples: list[Sample]) -> list[int | None]:
        """Store samples in one transaction: all or none. Ids, or None for one already stored."""
        rows = [self.row(checked(s)) for s in samples]
        with self.session() as db:
            db.execute("BEGIN IMMEDIATE")  # the count and the inserts, with no other writer between
            try:
                count = db.execute("SELECT count(*) FROM samples").fetchone()[0]
                if count + len(rows) > self.limits.max_samples:
                    raise FullError(f"{self.path} holds {count:,} samples and the limit is "
                                    f"{self.limits.max_samples:,}: export and delete some (`digitpi samples`)")
                ids = []
                for row in rows:
                    cursor = db.execute(
                        "INSERT OR IGNORE INTO samples (created, label, predicted, probabilities, model_sha256, "
                        "origin, picture, picture_format, picture_reduced, input) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
                    ids.append(cursor.lastrowid if cursor.rowcount else None)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        return ids

    @staticmethod
    def row(s: Sample) -> tuple:
        probabilities = None if s.probabilities is None else json.dumps([round(float(p), 6) for p in s.probabilities])
        return (s.created or now(), int(s.label), None if s.predicted is None else int(s.predicted), probabilities,
                s.model_sha256, s.origin, s.picture, s.picture_format, int(s.picture_reduced), s.input.tobytes())

    def delete(self, ids: list[int] | None = None, label: int | None = None) -> int:
        """Delete the samples with these ids and/or this label (both None: every sample); returns how many."""
        where, params = self.where(ids, label)
        with self.session() as db:
            return db.execute(f"DELETE FROM samples{where}", params).rowcount

    def fetch(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """Rows of one query."""
        with self.session() as db:
            return db.execute(sql, params).fetchall()

    # ---------------------------------------------------------------- reading

    @staticmethod
    def where(ids: list[int] | None = None, label: int | None = None) -> tuple[str, list]:
        clauses, params = [], []
        if ids is not None:
            clauses.append(f"id IN ({', '.join('?' * len(ids))})")
            params += list(ids)
        if label is not None:
            clauses.append("label = ?")
            params.append(label)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def count(self) -> int:
        return self.fetch("SELECT count(*) FROM samples")[0][0]

    def stats(self) -> dict:
        """Counts per digit, how many of them a model read when they were taken (imported pictures were
        not), and how many of those it read right."""
        per_digit, read, right = [0] * NUM_CLASSES, [0] * NUM_CLASSES, [0] * NUM_CLASSES
        for label, n, n_read, n_right in self.fetch("SELECT label, count(*), count(predicted), sum(predicted = label) "
                                                    "FROM samples GROUP BY label"):
            per_digit[label], read[label], right[label] = n, n_read, n_right or 0
        (first, last, models), = self.fetch("SELECT min(created), max(created), count(DISTINCT model_sha256) "
                                            "FROM samples")
        return {"total": sum(per_digit), "limit": self.limits.max_samples, "per_digit": per_digit,
                "model_read": read, "model_right": right, "first": first, "last": last, "models": models}

    def listing(self, label: int | None = None, last: int | None = None) -> list[dict]:
        """The samples without their pictures, oldest first (the `last` newest if given)."""
        where, params = self.where(label=label)
        limit = f" LIMIT {min(int(last), 2**62)}" if last is not None else ""  # SQLite's integers are 64-bit
        rows = self.fetch(f"SELECT {META_COLUMNS} FROM samples{where} ORDER BY id DESC{limit}", params)
        keys = ("id", "created", "label", "predicted", "probabilities", "model_sha256", "origin", "picture_format",
                "picture_reduced", "picture_bytes")
        listed = [dict(zip(keys, row)) for row in rows]
        for item in listed:
            item["probabilities"] = json.loads(item["probabilities"]) if item["probabilities"] else None
            item["picture_reduced"] = bool(item["picture_reduced"])
        return listed[::-1]

    def samples(self, ids: list[int] | None = None, label: int | None = None) -> Iterator[Sample]:
        """Every sample with its pictures, oldest first; read in pages, so memory stays flat."""
        where, params = self.where(ids, label)
        after = 0
        while True:
            joiner = " AND " if where else " WHERE "
            rows = self.fetch(
                f"SELECT id, created, label, predicted, probabilities, model_sha256, origin, picture, "
                f"picture_format, picture_reduced, input FROM samples{where}{joiner}id > ? ORDER BY id LIMIT 256",
                [*params, after])
            if not rows:
                return
            for (id_, created, label_, predicted, probabilities, sha, origin, picture, fmt, reduced, image) in rows:
                yield Sample(label=label_, input=np.frombuffer(image, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE),
                             picture=picture, picture_format=fmt, origin=origin, predicted=predicted,
                             probabilities=tuple(json.loads(probabilities)) if probabilities else None,
                             model_sha256=sha, created=created, picture_reduced=bool(reduced), id=id_)
            after = rows[-1][0]

    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8 (N, 28, 28), labels int64 (N,), ids (N,)) of every sample: what fine-tuning reads."""
        rows = self.fetch("SELECT id, label, input FROM samples ORDER BY id")
        images = np.frombuffer(b"".join(r[2] for r in rows), np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        return images.copy(), np.array([r[1] for r in rows], np.int64), np.array([r[0] for r in rows], np.int64)

    def backup(self, dest: Path) -> None:
        """A consistent copy of the whole database in one new file, even while a server writes to it."""
        if dest.exists() or dest.is_symlink():
            raise SamplesError(f"{dest} exists already: choose another folder")
        tmp = files.temporary_name(dest)
        try:
            copy = sqlite3.connect(tmp)
            try:
                with self.session() as db:
                    db.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            finally:
                copy.close()
            tmp.replace(dest)
        except sqlite3.Error as e:
            raise store_error(dest, e) from None
        finally:
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- export and import


CSV_FIELDS = ("id", "created", "label", "predicted", *(f"p{d}" for d in range(NUM_CLASSES)), "model_sha256",
              "origin", "picture", "picture_reduced", "input")


def export_folder(store: SampleStore, dest: Path) -> int:
    """PNG files and a CSV: DIR/pictures/ID.* as received, DIR/inputs/ID.png as the model saw them,
    DIR/samples.csv (written last) with one row each. Refuses a folder that already holds an export;
    an export cut short (a damaged database) removes the files it wrote."""
    if (dest / EXPORT_CSV).exists():
        raise SamplesError(f"{dest} already holds an export ({EXPORT_CSV}): choose another folder")
    made = [folder for folder in (dest / PICTURES, dest / INPUTS) if not folder.exists()]
    written: list[Path] = []
    try:
        for folder in made:
            folder.mkdir(parents=True)
        count = write_export(store, dest, written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return count


def write_export(store: SampleStore, dest: Path, written: list[Path]) -> int:
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for s in store.samples():
        picture = f"{PICTURES}/{s.id:06d}{extension(s.picture_format)}"
        image = f"{INPUTS}/{s.id:06d}.png"
        for name, payload in ((picture, s.picture), (image, png_bytes(s.input))):
            try:
                with open(dest / name, "xb") as f:  # a new file: never over one of the user's, nor through a link
                    written.append(dest / name)
                    f.write(payload)
            except FileExistsError:
                raise SamplesError(f"{dest / name} exists already: export into an empty folder") from None
        probabilities = s.probabilities or ("",) * NUM_CLASSES
        writer.writerow({"id": s.id, "created": s.created, "label": s.label,
                         "predicted": "" if s.predicted is None else s.predicted,
                         **{f"p{d}": p for d, p in enumerate(probabilities)}, "model_sha256": s.model_sha256 or "",
                         "origin": s.origin, "picture": picture, "picture_reduced": int(s.picture_reduced),
                         "input": image})
        count += 1
    written.append(dest / EXPORT_CSV)
    files.write_atomic(dest / EXPORT_CSV, text.getvalue().encode())
    return count


def export_rows(folder: Path, limit: int = LIMITS.max_samples) -> list[dict]:
    """The rows of an export folder's CSV; more than `limit` (no database holds more) are refused as
    they are read, so a huge CSV costs no memory."""
    index = folder / EXPORT_CSV
    rows = []
    try:
        with open(index, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if len(rows) == limit:
                    raise SamplesError(f"{index} holds more than {limit:,} samples, more than a samples "
                                       "database holds: not an export of digitpi's")
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SamplesError(f"{index}: unreadable ({e})") from None
    return rows


def failure(e: Exception) -> str:
    """Why a file could not be read, in a few words: the system's reason, else the exception's message."""
    return e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)


def member(folder: Path, name: str) -> Path:
    """The file `name` of an export folder: a regular file inside it (an export from elsewhere must not
    make digitpi read /dev/zero or a file beside the folder)."""
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
        raise ValueError(f"{name!r} is not a file in {folder}")
    return path


def export_input(path: Path) -> np.ndarray:
    """An export's inputs/ID.png: the 28x28 the model saw, its size checked before it is decoded."""
    with preprocess.open_image(path) as image:
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{path.name} is {image.width}x{image.height}, not {IMAGE_SIZE}x{IMAGE_SIZE}")
        return np.asarray(image.convert("L"))


def read_export(folder: Path, rows: list[dict]) -> Iterator[Sample]:
    """The samples of an export folder (`export_folder`) as they were stored, from its CSV rows, each
    checked as the database checks a sample."""
    index = folder / EXPORT_CSV
    for number, row in enumerate(rows, start=2):
        try:
            image = export_input(member(folder, row["input"]))
            picture, fmt, reduced = capped(member(folder, row["picture"]))
            probabilities = tuple(float(row[f"p{d}"]) for d in range(NUM_CLASSES)) if row["p0"] else None
            yield checked(Sample(label=int(row["label"]), input=image, picture=picture, picture_format=fmt,
                                 origin=row["origin"], predicted=int(row["predicted"]) if row["predicted"] else None,
                                 probabilities=probabilities, model_sha256=row["model_sha256"] or None,
                                 created=row["created"], picture_reduced=reduced or row["picture_reduced"] == "1"))
        except (KeyError, TypeError, ValueError, OSError, UserError) as e:  # a missing column or file, a bad PNG
            raise SamplesError(f"{index}, line {number}: {failure(e)}") from None


def read_digit_files(files: list[tuple[int, Path]], skipped: list[str] | None = None) -> Iterator[Sample]:
    """Pictures sorted into DIR/0 ... DIR/9, read as `digitpi predict` reads a picture; never read by
    a model, so without an answer. Each file's time is its modification time: importing twice adds nothing.
    A picture without a digit, not a picture or unreadable raises; with `skipped`, its one-line error
    goes there instead and the others are read."""
    for digit, path in files:
        try:
            image = preprocess.to_mnist(path, name=str(path))
            stored, fmt, reduced = capped(path)
            created = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
        except (preprocess.ImageError, OSError) as e:
            if skipped is None:
                raise
            skipped.append(str(e) if isinstance(e, preprocess.ImageError) else f"{path}: {failure(e)}")
            continue
        yield Sample(label=digit, input=image, picture=stored, picture_format=fmt, origin="import",
                     picture_reduced=reduced, created=created.isoformat(timespec="milliseconds"))


def source_kind(source: Path) -> str:
    """What `source` holds: "sqlite", "export" or "digits"; a one-line error for anything else."""
    if source.is_file():
        with open(source, "rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                return "sqlite"
        raise SamplesError(f"{source} is not a SQLite database")
    if not source.is_dir():
        raise SamplesError(f"no such file or folder {source}")
    if (source / EXPORT_CSV).is_file():
        return "export"
    if any((source / d).is_dir() for d in DIGIT_FOLDERS):
        return "digits"
    raise SamplesError(f"{source} holds neither {EXPORT_CSV} (`digitpi samples export`) nor folders 0-9 of pictures")


def digit_files(folder: Path) -> list[tuple[int, Path]]:
    return [(int(digit), path) for digit in DIGIT_FOLDERS
            for path in sorted((folder / digit).glob("*")) if path.is_file() and not path.name.startswith(".")]


def read_source(source: str | Path, skipped: list[str] | None = None) -> tuple[int, Iterator[Sample]]:
    """(how many, the samples one by one) of a samples database, an export folder or a folder per digit:
    the count first, so a caller can refuse too many before reading a picture. `skipped`: see
    `read_digit_files`."""
    source = Path(source)
    kind = source_kind(source)
    if kind == "sqlite":
        other = SampleStore(source, create=False, writable=False)

        def from_db() -> Iterator[Sample]:
            with other:
                yield from other.samples()

        return other.count(), from_db()
    if kind == "export":
        rows = export_rows(source)
        return len(rows), read_export(source, rows)
    files = digit_files(source)
    return len(files), read_digit_files(files, skipped)


def import_into(store: SampleStore, source: str | Path, batch: int = 256,
                skipped: list[str] | None = None) -> tuple[int, int]:
    """Add every sample of `source` to `store`; returns (added, already there). The limit is checked
    before anything is written; each batch of samples is one transaction. With `skipped`, a picture of
    a folder per digit that holds no digit is left out and its one-line error kept there."""
    skipped = [] if skipped is None else skipped
    total, samples = read_source(source, skipped)
    if store.count() + total > store.limits.max_samples:
        raise FullError(f"{store.path} holds {store.count():,} samples; {total:,} more would pass its limit "
                        f"of {store.limits.max_samples:,}")
    added, pending = 0, []
    for sample in samples:
        pending.append(sample)
        if len(pending) == batch:
            added += sum(id_ is not None for id_ in store.add_many(pending))
            pending = []
    added += sum(id_ is not None for id_ in store.add_many(pending)) if pending else 0
    return added, total - added - len(skipped)


def read_samples(source: str | Path, skipped: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of a samples database or folder: fine-tuning's
    input. `skipped`: see `read_digit_files`."""
    source = Path(source)
    if source_kind(source) == "sqlite":
        with SampleStore(source, create=False, writable=False) as store:
            images, labels, _ = store.inputs()
        return images, labels
    _, samples = read_source(source, skipped)
    pairs = [(s.input, s.label) for s in samples]
    images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return images, np.array([p[1] for p in pairs], np.int64)


# ---------------------------------------------------------------- for the terminal


def format_stats(stats: dict, path: Path) -> str:
    """Counts per digit and how often the model was right on them, as `digitpi samples stats` prints."""
    lines = [f"{path}: {stats['total']:,} samples (limit {stats['limit']:,})"]
    if stats["total"]:
        lines[0] += f", taken {stats['first'][:16].replace('T', ' ')} to {stats['last'][:16].replace('T', ' ')} UTC"
    lines.append("digit        " + "".join(f"{d:>6}" for d in range(NUM_CLASSES)) + "   all")
    lines.append("samples      " + "".join(f"{n:>6}" for n in stats["per_digit"]) + f"{stats['total']:>6}")
    lines.append("model read   " + "".join(f"{n:>6}" for n in stats["model_read"]) + f"{sum(stats['model_read']):>6}")
    lines.append("  right      " + "".join(f"{n:>6}" for n in stats["model_right"])
                 + f"{sum(stats['model_right']):>6}")
    return "\n".join(lines)


def format_listing(rows: list[dict]) -> str:
    """One line per sample, without pictures, as `digitpi samples list` prints."""
    lines = [f"{'id':>6}  {'created (UTC)':<19}  label  read   sure  {'origin':<10}  picture"]
    for r in rows:
        read = "" if r["predicted"] is None else str(r["predicted"])
        sure = f"{100 * r['probabilities'][r['predicted']]:.0f} %" if r["probabilities"] and read else ""
        picture = f"{r['picture_format']} {r['picture_bytes']:,} B" + (" (reduced)" if r["picture_reduced"] else "")
        lines.append(f"{r['id']:>6}  {r['created'][:19].replace('T', ' '):<19}  {r['label']:>5}  {read:>4}  "
                     f"{sure:>5}  {r['origin']:<10}  {picture}")
    return "\n".join(lines)
