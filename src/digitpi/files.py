"""Writing output files safely: whole or not at all, never through something that is not a file.

Every file digitpi writes (run folders, exports, plots, `predict --save-input`, downloads) goes
through `write_atomic`: the bytes go to a temporary file beside the target, named after it and
this process (`.NAME.PID-TOKEN.tmp`), which is renamed over the target once complete. So a reader
never sees half a file, two processes never share a temporary name, a FIFO, symlink, device or
folder at the target is refused rather than replaced, and the file gets the mode the user's umask
gives (0644 by default), not mkstemp's 0600. A temporary file left by a killed process is removed
by the next write of the same name. `writing(folder)` keeps two commands from filling one folder.

Standard library only: `digitpi predict` on the Pi writes through here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from digitpi import UserError

try:
    import fcntl
except ImportError:  # Windows: folders are not locked
    fcntl = None

KINDS = {stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO",
         stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}


def temporary_name(path: Path) -> Path:
    """A name beside `path` that no other process (nor another call here) uses."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def check_replaceable(path: Path) -> None:
    """Refuse to replace anything at `path` but a regular file (a rename would replace a device or a
    link itself, and the user meant neither)."""
    try:
        kind = stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    if kind != stat.S_IFREG:
        raise UserError(f"{path} is {KINDS.get(kind, 'not a regular file')}, not a regular file: not replaced")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale(path: Path) -> None:
    """Delete temporary files (or folders) of `path` left behind by processes that no longer run (killed mid-write)."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-[0-9a-f]{8}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match[1]) != os.getpid() and not process_alive(int(match[1])):
            stale = path.parent / name
            with contextlib.suppress(OSError):
                shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else os.unlink(stale)


def write_atomic(path: str | os.PathLike, payload: bytes) -> None:
    """Write `payload` to `path` in one piece: to a temporary file beside it, then renamed over it.
    Errors name `path`, never the temporary file."""
    path = Path(path)
    check_replaceable(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        # O_EXCL: never write through a file someone else created; mode 0o666 lets the umask decide
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the bytes (a Pi loses power)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def writing(folder: str | os.PathLike) -> Iterator[Path]:
    """Create `folder` and hold it for this process until the block ends: a second digitpi writing the
    same folder (two `train --out DIR`) stops at once with one line, instead of after minutes of work."""
    folder = Path(folder)
    try:
        try:
            folder.mkdir(parents=True)
            created = True  # by this mkdir, not by another process between a check and it
        except FileExistsError:
            if not folder.is_dir():
                raise
            created = False
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder}: {e.strerror}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the process ends, however
            except BlockingIOError:
                created = False  # the other process's folder
                raise UserError(f"another digitpi process is writing {folder}: wait for it to finish, "
                                "or choose another folder") from None
        yield folder
    except BaseException:
        if created:  # a failure (Ctrl-C, SIGTERM mid-save) leaves no folder behind: only this process wrote in it
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        os.close(fd)
