"""Find, download, verify and read MNIST-format datasets (IDX files).

Training side only needs numpy here: the arrays become torch tensors in `train`.
A folder counts as a dataset only when all four files are present and their
decompressed SHA-256 matches, so a wrong or half-copied folder never trains a model.
What checking and parsing a file found is kept across processes (`verified_dir()`), so only the
first run pays the second it takes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitpi import UserError
from digitpi.contract import IMAGE_SIZE
from digitpi.files import write_atomic

ENV_DATA_DIR = "DIGITPI_DATA_DIR"
ENV_MIRRORS = "DIGITPI_MIRRORS"  # comma-separated base URLs, tried before the built-in ones
SYSTEM_DIR = Path("/usr/share/datasets")  # Debian's dataset-* packages
DOWNLOAD_TIMEOUT = 30  # seconds per request

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}


class DataError(UserError):
    """A user-facing problem with data files; the message is one line that says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    sha256: dict[str, str]  # decompressed file name -> SHA-256 of its bytes
    mirrors: tuple[str, ...]  # base URLs holding the four `.gz` files


DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        classes=tuple(str(d) for d in range(10)),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
}

IDX_DTYPE_UBYTE = 0x08


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


# ---------------------------------------------------------------- IDX format


def read_file_bytes(path: Path) -> bytes:
    """Raw IDX bytes of `path`, gunzipped when it is a gzip file (by magic, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip data ({e})") from None
    return raw


def parse_idx(raw: bytes, name: str = "IDX data", expected_count: int | None = None) -> np.ndarray:
    """Parse IDX unsigned-byte data, checking magic, dimensions, count and exact length."""
    if len(raw) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(raw)} bytes)")
    zero0, zero1, dtype, ndim = raw[:4]
    if zero0 or zero1 or dtype != IDX_DTYPE_UBYTE or ndim not in (1, 3):
        raise DataError(f"{name}: wrong magic number 0x{raw[:4].hex()} "
                        "(expected 0x00000801 for labels or 0x00000803 for images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [IMAGE_SIZE, IMAGE_SIZE]:
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"{name}: header says {dims[0]} items, expected {expected_count}")
    expected_len = header + int(np.prod(dims))
    if len(raw) != expected_len:
        kind = "truncated" if len(raw) < expected_len else "has trailing bytes"
        raise DataError(f"{name}: {kind}: {len(raw)} bytes, header implies {expected_len}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | Path, expected_count: int | None = None) -> np.ndarray:
    path = Path(path)
    return parse_idx(read_file_bytes(path), str(path), expected_count)


# ---------------------------------------------------------------- locating data


def file_in(folder: Path, stem: str) -> Path | None:
    """The file for `stem` in `folder`, compressed or not."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def cache_dir(dataset: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digitpi" / dataset


def candidate_dirs(dataset: str, data_dir: str | Path | None = None) -> list[Path]:
    """Folders to look in, in order. An explicit folder is the only place looked: silently
    using another copy would hide a typo in --data-dir."""
    if data_dir is not None:
        return [Path(data_dir) / dataset, Path(data_dir)]
    env = os.environ.get(ENV_DATA_DIR)
    found = [Path(env) / dataset, Path(env)] if env else []
    return found + [cache_dir(dataset), SYSTEM_DIR / dataset]


def file_ok(path: Path, want: str) -> bool:
    """Whether the decompressed bytes of `path` hash to `want`; a file is hashed again only once it changed.

    The answer is looked up by the file's fingerprint (`fingerprint`), not its name: MNIST and
    Fashion-MNIST share file names, and a file that passed as MNIST must not pass as Fashion-MNIST.
    """
    if known_sha256(path) == want:
        return True
    got = hashlib.sha256(read_file_bytes(path)).hexdigest()
    remember_sha256(path, got)
    return got == want


def verify_folder(folder: Path, info: DatasetInfo) -> dict[str, str]:
    """Status of each file: 'ok', 'missing' or 'checksum mismatch'."""
    status = {}
    for stem, want in info.sha256.items():
        path = file_in(folder, stem)
        status[stem] = "missing" if path is None else "ok" if file_ok(path, want) else "checksum mismatch"
    return status


def checksums(dataset: str) -> dict[str, str]:
    """The SHA-256 of each file of `dataset`: the data a run used, recorded in its metrics."""
    return dict(dataset_info(dataset).sha256)


def holds_another(folder: Path, dataset: str) -> bool:
    """Whether `folder` holds some other known dataset whole (MNIST where Fashion-MNIST is asked for)."""
    return any(all(v == "ok" for v in verify_folder(folder, info).values())
               for name, info in DATASETS.items() if name != dataset)


def locate(dataset: str = "mnist", data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The first folder holding the verified dataset; download into the cache if none does.

    A folder holding another dataset is skipped (DIGITPI_DATA_DIR may point at MNIST while
    Fashion-MNIST, with the same file names, is asked for); a broken one is an error when the user
    named it (--data-dir, or DIGITPI_DATA_DIR), and is named in the error if the download fails.
    """
    info = dataset_info(dataset)
    env = os.environ.get(ENV_DATA_DIR)
    if data_dir is None and env and not Path(env).is_dir():
        raise DataError(f"{ENV_DATA_DIR}={env} is not a folder: point it at the folder holding the four "
                        f"{dataset} files, or unset it")
    named = [Path(data_dir)] if data_dir is not None else [Path(env), Path(env) / dataset] if env else []
    skipped = []
    for folder in candidate_dirs(dataset, data_dir):
        if not folder.is_dir() or file_in(folder, next(iter(info.sha256))) is None:
            continue
        status = verify_folder(folder, info)
        if all(s == "ok" for s in status.values()):
            return folder
        bad = ", ".join(f"{k}: {v}" for k, v in status.items() if v != "ok")
        if folder in named and not (data_dir is None and holds_another(folder, dataset)):
            where = "" if data_dir is not None else f" ({ENV_DATA_DIR})"
            raise DataError(f"{folder}{where} does not hold {dataset} ({bad})")
        skipped.append(f"{folder} ({bad})")
    if data_dir is not None:
        raise DataError(f"no {dataset} files in {data_dir} (expected {', '.join(info.sha256)}, optionally .gz)")
    if env:
        skipped.append(f"{ENV_DATA_DIR}={env} (no {dataset} files)")
    if not download:
        raise DataError(f"{dataset} not found; set {ENV_DATA_DIR} or pass --data-dir")
    try:
        return download_dataset(dataset, cache_dir(dataset))
    except DataError as e:
        if not skipped:
            raise
        raise DataError(f"{e}. Looked in: {'; '.join(skipped)}") from None


# ---------------------------------------------------------------- download


def mirrors_for(info: DatasetInfo) -> list[str]:
    extra = [m for m in os.environ.get(ENV_MIRRORS, "").split(",") if m]
    return extra + list(info.mirrors)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        return response.read()


def download_dataset(dataset: str, dest: Path, mirrors: list[str] | None = None) -> Path:
    """Download the four files from the first mirror that serves each one intact."""
    info = dataset_info(dataset)
    mirrors = mirrors if mirrors is not None else mirrors_for(info)
    for stem, want in info.sha256.items():
        if file_in(dest, stem) is not None and verify_folder(dest, info)[stem] == "ok":
            continue
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + f"/{stem}.gz"
            try:
                payload = fetch(url)
                got = hashlib.sha256(gzip.decompress(payload)).hexdigest()
            except (urllib.error.URLError, OSError, EOFError, ValueError) as e:
                failures.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            if got != want:
                failures.append(f"{url}: checksum mismatch")
                continue
            write_atomic(dest / f"{stem}.gz", payload)
            break
        else:
            raise DataError(
                f"could not download {stem}.gz ({'; '.join(failures)}). Offline? Copy the four "
                f"{dataset} files into a folder and pass --data-dir DIR or set {ENV_DATA_DIR}=DIR")
    return dest


# ---------------------------------------------------------------- loading


def load_split(dataset: str = "mnist", split: str = "train",
               data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N x 28 x 28) and labels (int64, N) of one split."""
    if split not in SPLIT_FILES:
        raise DataError(f"unknown split {split!r}; choose train or test")
    info = dataset_info(dataset)
    folder = locate(dataset, data_dir)
    image_stem, label_stem = SPLIT_FILES[split]
    count = SPLIT_SIZES[split]
    images = read_verified(file_in(folder, image_stem), info.sha256[image_stem], (count, IMAGE_SIZE, IMAGE_SIZE))
    labels = read_verified(file_in(folder, label_stem), info.sha256[label_stem], (count,))
    if labels.ndim != 1 or images.ndim != 3:
        raise DataError(f"{folder}: image and label files are swapped or malformed")
    return images, labels.astype(np.int64)


def read_verified(path: Path, sha256: str, shape: tuple[int, ...]) -> np.ndarray:
    """The array of an IDX file `locate` verified: from the cache when parsed before, else parsed and cached."""
    cached = load_array(sha256, shape)
    if cached is not None:
        return cached
    array = read_idx(path, shape[0])
    save_array(sha256, array)
    return array


# ---------------------------------------------------------------- what earlier runs verified and parsed
#
#     VERIFIED_DIR/hashes.json    a file's fingerprint -> the SHA-256 its decompressed bytes had
#     VERIFIED_DIR/<sha256>.npy   the array parsed from the file whose bytes have that SHA-256
#
# The fingerprint holds the resolved path, device, inode, size, mtime and ctime. Any write to a file
# changes its ctime, which no user call can set back, so a file edited in place (its mtime restored
# or not) is hashed again and never passes on an old answer. The cache is a shortcut only: when it
# cannot be read or written, files are hashed and parsed as if it were not there.

HASHES = "hashes.json"


def verified_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digitpi" / "verified"


def fingerprint(path: Path) -> str:
    """Changes whenever the file's bytes can have changed."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


def read_hashes() -> dict[str, str]:
    try:
        hashes = json.loads((verified_dir() / HASHES).read_text())
    except (OSError, ValueError):
        return {}
    return hashes if isinstance(hashes, dict) else {}


def known_sha256(path: Path) -> str | None:
    """The SHA-256 `path` had when it was last hashed, if it has not changed since."""
    return read_hashes().get(fingerprint(path))


def remember_sha256(path: Path, sha256: str) -> None:
    """Record a hash just computed; entries of files that no longer exist are dropped on the way."""
    hashes = {key: value for key, value in read_hashes().items() if Path(key.split("|", 1)[0]).exists()}
    hashes[fingerprint(path)] = sha256
    with contextlib.suppress(OSError):  # a read-only home: hash again next time
        write_atomic(verified_dir() / HASHES, (json.dumps(hashes, indent=1) + "\n").encode())


def load_array(sha256: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The uint8 array parsed from the bytes with this SHA-256, if it was cached with this shape.

    Memory-mapped and read-only, as a parsed IDX file is: callers copy what they change, and a copy
    from the page cache is all a second run pays."""
    try:
        array = np.load(verified_dir() / f"{sha256}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return array if array.dtype == np.uint8 and array.shape == shape else None


def save_array(sha256: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with contextlib.suppress(OSError):
        write_atomic(verified_dir() / f"{sha256}.npy", buffer.getvalue())
