"""The built wheel asks for onnxruntime where a wheel of it exists, and not on 32-bit ARM.

`pip install digitpi` on a 32-bit Raspberry Pi OS (armv7l, armv6l; armv8l for a 32-bit userland on a
64-bit kernel) must not require onnxruntime, which has no wheel there. The markers are read from
the wheel's own METADATA and evaluated for each machine as pip does. (pi/test_arm.py installs the
wheel with pip on emulated armhf, with no index: the same answer, from pip itself.)
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LINUX_PY311 = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "python_version": "3.11",
               "python_full_version": "3.11.2", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "extra": ""}


@pytest.fixture(scope="module")
def requirements(tmp_path_factory) -> list[Requirement]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True,
                   capture_output=True, timeout=600)
    [wheel] = out.glob("digitpi-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    return [Requirement(line) for line in metadata.get_all("Requires-Dist")]


def core_requirements(requirements: list[Requirement], machine: str) -> dict[str, Requirement]:
    """What `pip install digitpi` (no extras) needs on a Linux machine of this kind."""
    env = {**LINUX_PY311, "platform_machine": machine}
    return {r.name.lower(): r for r in requirements if r.marker is None or r.marker.evaluate(env)}


@pytest.mark.parametrize("machine", ["armv6l", "armv7l", "armv8l"])
def test_32bit_arm_install_needs_no_onnxruntime(requirements, machine):
    assert sorted(core_requirements(requirements, machine)) == ["numpy", "pillow"]


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_64bit_install_gets_an_onnxruntime_that_loads_our_files(requirements, machine):
    needed = core_requirements(requirements, machine)
    assert sorted(needed) == ["numpy", "onnxruntime", "pillow"]
    allowed = needed["onnxruntime"].specifier
    assert "1.17.3" not in allowed  # reads no IR-10 ONNX file, as export writes
    assert "1.21.0" not in allowed  # SIGILL at import on the Pi 4's and Pi 3's cores
    assert all(v in allowed for v in ("1.18.1", "1.21.1", "1.32.0"))


def test_debian_bookworm_numpy_and_pillow_satisfy_the_core(requirements):
    """32-bit Pis take numpy and Pillow from apt: Debian 12 / Raspberry Pi OS 12 ship 1.24.2 and 9.4.0."""
    needed = core_requirements(requirements, "armv7l")
    assert "1.24.2" in needed["numpy"].specifier and "9.4.0" in needed["pillow"].specifier
