"""`make test` on a laptop: the Debian packages the tests need are installed by root as is, by anyone else
through sudo; with no sudo, make stops and prints the one command to run first.

The real Makefile runs under the real make; `id`, `sudo` and `apt-get` are stand-ins on PATH that only
record how they were called (nothing is installed).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = "chromium dataset-fashion-mnist systemd"
MAKE = shutil.which("make")


def stand_ins(folder: Path, uid: int, sudo: bool) -> Path:
    folder.mkdir()
    calls = folder / "calls.log"
    commands = {"id": f'[ "$1" = -u ] && echo {uid}', "apt-get": f'echo "apt-get $*" >> {calls}'}
    if sudo:
        commands["sudo"] = f'echo "sudo $*" >> {calls}'
    for name, body in commands.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return calls


@pytest.mark.skipif(MAKE is None, reason="no make")
@pytest.mark.parametrize("uid, sudo, installed, calls, code", [
    (0, False, False, ["apt-get update -q", f"apt-get install -y -q {PACKAGES}"], 0),
    (1000, True, False, ["sudo apt-get update -q", f"sudo apt-get install -y -q {PACKAGES}"], 0),
    (1000, False, False, [], 2),
    (1000, False, True, [], 0),
], ids=["root", "user with sudo", "user without sudo", "already installed"])
def test_system_deps(tmp_path: Path, uid: int, sudo: bool, installed: bool, calls: list[str], code: int) -> None:
    log = stand_ins(tmp_path / "bin", uid, sudo)
    present = {"CHROMIUM": "/bin/sh", "FASHION_MNIST": str(tmp_path), "SYSTEMD_ANALYZE": "/bin/sh"} if installed else {
        "CHROMIUM": str(tmp_path / "no-chromium"), "FASHION_MNIST": str(tmp_path / "no-fashion"),
        "SYSTEMD_ANALYZE": str(tmp_path / "no-systemd-analyze")}
    done = subprocess.run([MAKE, "-s", "-C", str(REPO), "system-deps", *(f"{k}={v}" for k, v in present.items())],
                          capture_output=True, text=True, timeout=60, env={"PATH": str(tmp_path / "bin")})
    assert done.returncode == code, done.stderr
    assert (log.read_text().splitlines() if log.exists() else []) == calls
    if code:
        assert f"as root, run first:\n  apt-get install {PACKAGES}\n" in done.stdout
