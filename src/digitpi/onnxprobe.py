"""Does onnxruntime work on this CPU? Asked once, in a child process, and remembered.

Some onnxruntime wheels kill Python at `import` on a Raspberry Pi: 1.21.0 for aarch64 dies with
SIGILL (illegal instruction) on the Pi 4's Cortex-A72 and the Pi 3's Cortex-A53 (onnxruntime
issues 23957 and 24112). A signal cannot be caught, so the runtime never imports onnxruntime in its
own process before a forked child has imported it, loaded the model file and run it once. The
answer is kept in the user's cache, keyed by everything that decides it (the onnxruntime build,
the interpreter, the CPU's feature bits, the model file), so only the first command pays for it.

The child is a fork, not a new interpreter: it needs no second start of Python (seconds on a Pi),
and it works where the interpreter can only be started through an emulator (qemu-user without
binfmt_misc, as in `make pi-test`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

CACHE_FILE = "onnxruntime-probe.json"  # in $XDG_CACHE_HOME/digitpi (default ~/.cache/digitpi)
TIMEOUT = 300.0  # seconds for the child to import onnxruntime and run the model once (a Pi Zero is slow)
AT_HWCAP, AT_HWCAP2 = 16, 26  # auxiliary-vector keys of the CPU feature bits (linux/auxvec.h)

_answers: dict[str, str] = {}  # key -> "" (works) or the reason it does not, for this process


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digitpi" / CACHE_FILE


def cpu_features() -> str:
    """The CPU's feature bits as the kernel (or an emulator) hands them to this process, from /proc/self/auxv.

    An SD card moved from a Pi 5 to a Pi 4 keeps its cache: the key must change with the CPU.
    """
    try:
        raw = Path("/proc/self/auxv").read_bytes()
    except OSError:
        return platform.processor()
    pair = "=QQ" if struct.calcsize("P") == 8 else "=II"  # (key, value) words of the process's own width
    whole = len(raw) - len(raw) % struct.calcsize(pair)
    bits = {key: value for key, value in struct.iter_unpack(pair, raw[:whole]) if key in (AT_HWCAP, AT_HWCAP2)}
    return f"hwcap={bits.get(AT_HWCAP, 0):x},hwcap2={bits.get(AT_HWCAP2, 0):x}"


def probe_key(origin: str, model_sha256: str) -> str:
    try:
        version = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:  # onnxruntime-gpu and friends install the same module
        version = "?"
    parts = [version, origin, str(os.stat(origin).st_mtime_ns), sys.executable, platform.machine(), cpu_features(),
             model_sha256]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def read_answers() -> dict:
    try:
        answers = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return answers if isinstance(answers, dict) else {}


def remember(key: str, reason: str) -> None:
    """Add one answer to the cache file; a cache that cannot be written only costs a child next time."""
    path = cache_path()
    answers = read_answers()
    answers[key] = {"works": not reason, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(answers, indent=1))
        os.replace(temporary, path)
    except OSError:
        pass


# ---------------------------------------------------------------- the child


def run_once(model: str) -> None:
    """In the child: what the runtime will do, once, on zeros. Any failure is an exception or a signal."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in first.shape]  # a symbolic batch axis: 1
    session.run(None, {first.name: np.zeros(shape, np.float32)})


def describe(code: int, message: str) -> str:
    """One line from a child's exit code (negative: killed by that signal) and its output."""
    if code < 0:
        name = signal.Signals(-code).name
        why = {"SIGILL": "illegal instruction: this build does not support this CPU"}.get(name, "it crashed")
        return f"killed by {name} ({why})"
    last = message.strip().splitlines()[-1:] or [f"exit status {code}"]
    return last[0][:300]


def ask_forked_child(model: str) -> str | None:
    """'' when a forked child ran the model, the reason when it did not, None when it timed out."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its output goes to the pipe, not to the user's terminal
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            run_once(model)
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent, whatever it is
            os.write(2, f"\n{type(e).__name__}: {e}\n".encode(errors="replace"))
            code = 1
        os._exit(code)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + TIMEOUT
    with os.fdopen(read_end, "rb") as pipe:
        while time.monotonic() < deadline:
            if select.select([pipe], [], [], 1.0)[0]:
                chunk = os.read(pipe.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return "" if code == 0 else describe(code, b"".join(chunks).decode(errors="replace"))


def ask_new_interpreter(model: str) -> str | None:
    """Where there is no fork (Windows): the same check in a fresh interpreter."""
    code = f"from digitpi.onnxprobe import run_once; run_once({model!r})"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
    return "" if done.returncode == 0 else describe(done.returncode, done.stderr)


# ---------------------------------------------------------------- the question


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def problem(model: str | Path, model_sha256: str) -> str | None:
    """None when onnxruntime runs `model` on this machine; else one line saying why it cannot.

    `model_sha256` is the card's checksum of the file (already verified): the key of the answer.
    """
    spec = importlib.util.find_spec("onnxruntime")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return "onnxruntime is not installed"
    try:
        key = probe_key(spec.origin, model_sha256)
    except OSError:
        return "onnxruntime is installed but unreadable"
    if key not in _answers:
        known = read_answers().get(key)
        if isinstance(known, dict) and "reason" in known:
            _answers[key] = known["reason"]
        else:
            ask = ask_forked_child if hasattr(os, "fork") else ask_new_interpreter
            reason = ask(str(model))
            if reason is None:  # not an answer: no cache entry, ask again next time
                return f"onnxruntime did not load the model within {TIMEOUT:.0f} s"
            _answers[key] = reason
            remember(key, reason)
    reason = _answers[key]
    if not reason:
        return None
    try:
        version = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return f"onnxruntime {version} cannot run here: {reason}".replace("  ", " ")
