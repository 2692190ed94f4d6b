"""A real `digitpi serve` in a child process on a free loopback port: for `digitpi bench serve` and the tests;
and what such a process holds in memory (Linux /proc).

Standard library only; the server process itself imports the web stack.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT = 60.0  # seconds `launch` waits for a new server to answer /health


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}/health")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not answer /health within {timeout:.0f} s")


@dataclass(frozen=True)
class Launched:
    url: str  # base URL, e.g. http://127.0.0.1:40123
    pid: int  # the server's process id


@contextlib.contextmanager
def launch(model_dir: str | Path, precision: str | None = None, log_level: str = "warning",
           env: dict[str, str] | None = None, args: Sequence[str] = ()) -> Iterator[Launched]:
    """Run `digitpi serve` in a child process on a free loopback port until the block ends;
    `args` are more of its flags (`--collect`, ...)."""
    port = free_port()
    command = [sys.executable, "-m", "digitpi.cli", "serve", "--model", str(model_dir), "--port", str(port),
               "--log-level", log_level]
    if precision:
        command += ["--precision", precision]
    command += list(args)
    process = subprocess.Popen(command, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield Launched(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), in MB; None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def listening_pid(port: int) -> int | None:
    """The process listening on TCP `port` of this machine (Linux, same user or root), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        inodes.add(f"socket:[{fields[9]}]")
        except (OSError, StopIteration):
            continue
    for pid in filter(str.isdigit, os.listdir("/proc") if inodes else []):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None
