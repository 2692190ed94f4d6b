"""The IDX reader and the data locator/downloader, on the real MNIST files and a local HTTP server."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from digitpi import data


def test_reads_real_files(mnist_dir: Path) -> None:
    images = data.read_idx(mnist_dir / "train-images-idx3-ubyte.gz", 60_000)
    labels = data.read_idx(mnist_dir / "train-labels-idx1-ubyte.gz", 60_000)
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(images.mean() / 255 - 0.1307) < 1e-4  # the known MNIST pixel mean


def test_reads_uncompressed_copy(mnist_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert data.read_idx(raw, 10_000)[:5].tolist() == [7, 2, 1, 0, 4]


@pytest.fixture
def label_bytes(mnist_dir: Path) -> bytes:
    return gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:-100], "truncated"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b"\x00\x00\x09\x01" + b[4:], "wrong magic number"),
    (lambda b: b[:4] + (9999).to_bytes(4, "big") + b[8:], "header says 9999 items"),
    (lambda b: b[:3], "too short"),
])
def test_rejects_bad_files(label_bytes: bytes, tmp_path: Path, mutate, message: str) -> None:
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(mutate(label_bytes))
    with pytest.raises(data.DataError, match=message) as err:
        data.read_idx(bad, 10_000 if "9999" in message else None)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_rejects_wrong_image_size(tmp_path: Path) -> None:
    bad = tmp_path / "images"
    bad.write_bytes(b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (1, 32, 32)) + bytes(1024))
    with pytest.raises(data.DataError, match="32x32, expected 28x28"):
        data.read_idx(bad)


def test_rejects_corrupt_gzip(tmp_path: Path) -> None:
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(50))
    with pytest.raises(data.DataError, match="corrupt gzip"):
        data.read_idx(bad)


def test_explicit_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="no mnist files in"):
        data.locate("mnist", tmp_path / "nowhere")


def test_explicit_folder_with_wrong_files_is_an_error(mnist_dir: Path, tmp_path: Path) -> None:
    for f in mnist_dir.glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-1] + b"\x03"))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte: checksum mismatch"):
        data.locate("mnist", tmp_path)


@pytest.fixture
def mnist_copy(mnist_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    """The four MNIST files copied into a fresh folder, with a fresh, empty cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in mnist_dir.glob("*.gz"):
        shutil.copy(f, folder / f.name)
    return folder


def test_second_read_comes_from_the_cache(mnist_copy: Path) -> None:
    """The first read hashes and parses each file and keeps both answers; the second serves the same arrays."""
    first = data.load_split("mnist", "test", mnist_copy)
    hashes = data.read_hashes()
    assert sorted(hashes.values()) == sorted(data.DATASETS["mnist"].sha256.values())  # all four were verified
    assert {data.fingerprint(f) for f in mnist_copy.glob("*.gz")} == set(hashes)
    cached = sorted(p.stem for p in data.verified_dir().glob("*.npy"))
    assert cached == sorted(data.DATASETS["mnist"].sha256[stem] for stem in data.SPLIT_FILES["test"])
    second = data.load_split("mnist", "test", mnist_copy)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert np.array_equal(second[0], data.read_idx(mnist_copy / "t10k-images-idx3-ubyte.gz"))


def test_a_file_changed_in_place_is_hashed_again(mnist_copy: Path) -> None:
    """Same size, same mtime, one label changed: its ctime moved, so the cached hash no longer vouches for it."""
    packed = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    labels = mnist_copy / "t10k-labels-idx1-ubyte"
    labels.write_bytes(gzip.decompress(packed.read_bytes()))
    packed.unlink()
    data.load_split("mnist", "test", mnist_copy)
    stat = labels.stat()
    raw = bytearray(labels.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(bytes(raw))
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (labels.stat().st_size, labels.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte: checksum mismatch"):
        data.load_split("mnist", "test", mnist_copy)


def test_a_damaged_cache_is_read_around(mnist_copy: Path) -> None:
    """A truncated cached array is ignored (and written again): the cache can only save time."""
    expected = data.load_split("mnist", "test", mnist_copy)[0]
    for cached in data.verified_dir().glob("*.npy"):
        cached.write_bytes(cached.read_bytes()[:1000])
    (data.verified_dir() / data.HASHES).write_text("not json")
    images = data.load_split("mnist", "test", mnist_copy)[0]
    assert np.array_equal(images, expected)
    assert data.load_array(data.DATASETS["mnist"].sha256["t10k-images-idx3-ubyte"], images.shape) is not None


# ---------------------------------------------------------------- download from a local server


@pytest.fixture(scope="module")
def mirror(mnist_dir: Path, tmp_path_factory):
    """Three local mirrors on 127.0.0.1: /good serves the real files, /corrupt flips bytes, /empty has none."""
    root = tmp_path_factory.mktemp("www")
    (root / "good").mkdir()
    (root / "corrupt").mkdir()
    (root / "empty").mkdir()
    for f in mnist_dir.glob("*.gz"):
        shutil.copy(f, root / "good" / f.name)
        raw = bytearray(gzip.decompress(f.read_bytes()))
        raw[-1] ^= 0xFF  # same length, valid gzip, wrong checksum
        (root / "corrupt" / f.name).write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def unreachable_url() -> str:
    return "http://127.0.0.1:9/"  # the discard port: nothing listens there


def test_download_from_good_mirror_after_failing_ones(mirror: str, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    mirrors = [unreachable_url(), f"{mirror}/empty/", f"{mirror}/corrupt/", f"{mirror}/good/"]
    assert data.download_dataset("mnist", dest, mirrors) == dest
    assert all(s == "ok" for s in data.verify_folder(dest, data.DATASETS["mnist"]).values())
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{s}.gz" for s in data.DATASETS["mnist"].sha256)


@pytest.mark.parametrize("kinds", [["corrupt"], ["empty"], ["unreachable"]])
def test_failed_download_leaves_nothing_and_says_what_to_do(mirror: str, tmp_path: Path, kinds) -> None:
    dest = tmp_path / "cache"
    mirrors = [unreachable_url() if k == "unreachable" else f"{mirror}/{k}/" for k in kinds]
    with pytest.raises(data.DataError, match="Offline\\? .* --data-dir DIR or set DIGITPI_DATA_DIR") as err:
        data.download_dataset("mnist", dest, mirrors)
    assert ("checksum mismatch" in str(err.value)) == (kinds == ["corrupt"])
    assert not dest.exists() or list(dest.iterdir()) == []


def test_locate_downloads_into_cache(mirror: str, tmp_path: Path, monkeypatch) -> None:
    """The whole chain a new user hits: no data anywhere, so download into ~/.cache/digitpi."""
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(data.ENV_MIRRORS, f"{mirror}/corrupt/,{mirror}/good/")
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-datasets")
    folder = data.locate("mnist")
    assert folder == tmp_path / "xdg" / "digitpi" / "mnist"
    images, labels = data.load_split("mnist", "test")
    assert images.shape == (10_000, 28, 28) and labels[:3].tolist() == [7, 2, 1]


def test_fashion_mnist_from_debian_package(mnist_dir: Path) -> None:
    """`apt-get install dataset-fashion-mnist` (done by `make test`) is found, although
    DIGITPI_DATA_DIR points at MNIST, whose files have the same names."""
    assert data.locate("fashion-mnist") == data.SYSTEM_DIR / "fashion-mnist"
    images, labels = data.load_split("fashion-mnist", "test")
    assert images.shape == (10_000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    assert data.dataset_info("fashion-mnist").classes[9] == "Ankle boot"
