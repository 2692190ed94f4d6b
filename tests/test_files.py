"""Output files: written whole, never through a FIFO, link or device, with the umask's mode, no stray temporaries,
and one writer per folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from digitpi import UserError, files


def temporaries(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_writes_whole_files_with_the_umask_mode(tmp_path):
    target = tmp_path / "deep" / "out.json"
    previous = os.umask(0o022)
    try:
        files.write_atomic(target, b"{}")
        assert target.read_bytes() == b"{}" and stat.S_IMODE(target.stat().st_mode) == 0o644
        os.umask(0o077)
        files.write_atomic(target, b"[]")  # replaced; the mode is the umask's, not the old file's
        assert target.read_bytes() == b"[]" and stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.umask(previous)
    assert temporaries(target.parent) == []


def test_refuses_to_replace_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    real = tmp_path / "real.png"
    real.write_bytes(b"mine")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    (tmp_path / "folder").mkdir()
    cases = [(fifo, "a FIFO"), (link, "a symbolic link"), (tmp_path / "folder", "a folder")]
    if os.geteuid() == 0:  # a device node of our own, like /dev/null
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        cases.append((tmp_path / "null", "a device"))
    for path, kind in cases:
        before = os.lstat(path)
        with pytest.raises(UserError, match=f"is {kind}, not a regular file") as err:
            files.write_atomic(path, b"PNG")
        assert "\n" not in str(err.value)
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)  # untouched
    assert real.read_bytes() == b"mine" and temporaries(tmp_path) == []


def test_failures_leave_no_temporary_and_name_the_target(tmp_path):
    with pytest.raises(TypeError):
        files.write_atomic(tmp_path / "x.bin", "not bytes")  # fails half-way through writing
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as err:
        files.write_atomic(tmp_path / "file" / "sub.png", b"PNG")
    assert str(err.value).startswith(f"cannot write {tmp_path / 'file' / 'sub.png'}: ") and ".tmp" not in str(err.value)


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_temporaries_of_killed_processes_are_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "model.onnx"
    stale = tmp_path / f".model.onnx.{dead_pid()}-0badf00d.tmp"
    alive = tmp_path / f".model.onnx.{os.getppid()}-0badf00d.tmp"  # another process, still writing
    other = tmp_path / f".weights.npz.{dead_pid()}-0badf00d.tmp"  # another file's: left to its own next write
    for path in (stale, alive, other):
        path.write_bytes(b"half")
    files.write_atomic(target, b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, alive.name, other.name])
    assert files.temporary_name(target) != files.temporary_name(target)  # unique per call, named per process


def test_one_writer_per_folder(tmp_path):
    out = tmp_path / "run"
    with files.writing(out):
        with pytest.raises(UserError, match="another digitpi process is writing"), files.writing(out):
            pass
        # the real command stops at once, before reading any data, with one line
        done = subprocess.run([sys.executable, "-m", "digitpi.cli", "train", "--epochs", "1", "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1
        assert done.stderr.startswith(f"digitpi: error: another digitpi process is writing {out}")
    with files.writing(out):  # released when the block ends
        pass


def test_a_failure_removes_the_folder_it_created(tmp_path):
    with pytest.raises(RuntimeError), files.writing(tmp_path / "new") as out:
        files.write_atomic(out / "config.json", b"{}")  # stopped after the first files of a run were saved
        raise RuntimeError("export failed")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), files.writing(tmp_path / "kept"):
        raise RuntimeError("export failed")
    assert (tmp_path / "kept" / "notes.txt").is_file()  # the user's own folder stays
