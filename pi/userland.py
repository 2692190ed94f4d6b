"""Debian bookworm userlands of the Raspberry Pi's architectures, run on this PC by qemu-user.

`make pi-test` proves the Pi side on ARM without a Pi. A userland is the unpacked files of a few
Debian packages (`apt-get download` into a private apt state, then `dpkg -x`; no dpkg database,
no chroot, no root needed to run it), and the emulator is called directly (`qemu-aarch64-static
-L ROOT ROOT/usr/bin/python3.11 ...`), as binfmt_misc may not be there. Emulated timings are not
Pi timings.

What is built is cached outside the repository, in $DIGITPI_PI_CACHE (default
${XDG_CACHE_HOME:-~/.cache}/digitpi/pi), under names keyed by what went into it, so a second run
reuses it and a changed recipe builds afresh. `python pi/userland.py` builds everything and says
where it is.

One gap of qemu-user is closed by hand: qemu 7.2 (bookworm's) shows the guest the *host's*
/proc/cpuinfo, an x86 one, which onnxruntime >= 1.28 cannot parse on ARM and dies at import
(SIGSEGV, a NULL pointer in its CPU detection; with an ARM /proc/cpuinfo, as a Pi has and as
qemu 10 emulates, it loads). qemu-user reads a guest's absolute paths from the -L folder first, so
each core model gets a copy of the userland (hard links) holding the /proc/cpuinfo of the Pi it
stands for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RECIPE = 1  # bump when the way a userland is built changes: every cached userland is rebuilt
SUITE = "bookworm"  # Raspberry Pi OS 12 is built on Debian 12
PYTHON = "usr/bin/python3.11"  # bookworm's python3, as on Raspberry Pi OS 12


@dataclass(frozen=True)
class Core:
    """A Raspberry Pi's CPU: qemu's model of its core and the /proc/cpuinfo the Pi shows."""

    qemu_cpu: str
    pi: str
    cpuinfo: str


def cpuinfo_arm64(part: str, revision: int, model: str) -> str:
    cores = "".join(f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                    f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\n"
                    f"CPU revision\t: {revision}\n\n" for n in range(4))
    return cores + f"Model\t\t: {model}\n"


def cpuinfo_armv7(part: str, revision: int, model: str) -> str:
    cores = "".join(f"processor\t: {n}\nmodel name\t: ARMv7 Processor rev {revision} (v7l)\nBogoMIPS\t: 38.40\n"
                    "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\n"
                    f"CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: {part}\n"
                    f"CPU revision\t: {revision}\n\n" for n in range(4))
    return cores + f"Hardware\t: BCM2835\nModel\t\t: {model}\n"


CORES = {
    "cortex-a72": Core("cortex-a72", "Raspberry Pi 4", cpuinfo_arm64("0xd08", 3, "Raspberry Pi 4 Model B Rev 1.1")),
    "cortex-a53": Core("cortex-a53", "Raspberry Pi 3", cpuinfo_arm64("0xd03", 4, "Raspberry Pi 3 Model B Rev 1.2")),
    # qemu-arm has no 32-bit Cortex-A53; the Pi 2's A7 is the ARMv7 core Debian's armhf is built for
    "cortex-a7": Core("cortex-a7", "Raspberry Pi 2", cpuinfo_armv7("0xc07", 5, "Raspberry Pi 2 Model B Rev 1.1")),
}


@dataclass(frozen=True)
class Arch:
    debian: str  # Debian's name of the architecture
    qemu: str  # the emulator, from Debian's qemu-user-static
    machine: str  # what platform.machine() says there
    packages: tuple[str, ...]  # Debian packages of the userland (apt adds their dependencies)
    cores: tuple[str, ...]  # keys of CORES to run it as


ARCHES = {
    # 64-bit Raspberry Pi OS: numpy, Pillow and onnxruntime come as aarch64 wheels from PyPI
    "arm64": Arch("arm64", "qemu-aarch64-static", "aarch64", ("python3", "libstdc++6"),
                  ("cortex-a72", "cortex-a53")),
    # 32-bit Raspberry Pi OS: no onnxruntime wheel; numpy and Pillow from Debian, pip from Debian for the install
    "armhf": Arch("armhf", "qemu-arm-static", "armv7l", ("python3", "python3-numpy", "python3-pil", "python3-pip"),
                  ("cortex-a7",)),
}


def cache_dir() -> Path:
    if os.environ.get("DIGITPI_PI_CACHE"):
        return Path(os.environ["DIGITPI_PI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "digitpi" / "pi"


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps([RECIPE, *parts]).encode()).hexdigest()[:12]


def log(message: str) -> None:
    print(f"[pi] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- Debian packages of another architecture


def debian_sources() -> str:
    """The machine's Debian mirrors (deb822), pinned to bookworm whatever release this machine runs."""
    host = Path(os.environ.get("DIGITPI_PI_APT_SOURCES", "/etc/apt/sources.list.d/debian.sources"))
    if not host.is_file():
        raise RuntimeError(f"no Debian apt sources at {host}: set DIGITPI_PI_APT_SOURCES to a deb822 .sources file")
    uris = [line.split(":", 1)[1].strip() for line in host.read_text().splitlines() if line.startswith("URIs:")]
    entries = []
    for uri in dict.fromkeys(" ".join(uris).split()):
        suites = f"{SUITE}-security" if uri.rstrip("/").endswith("-security") else f"{SUITE} {SUITE}-updates"
        entries.append(f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\n"
                       "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    return "\n".join(entries)


def private_apt(arch: Arch) -> dict[str, str]:
    """An apt of its own for `arch` (state, lists, downloads in the cache): the machine's apt is untouched."""
    top = cache_dir() / f"apt-{arch.debian}"
    for sub in ("etc/sources.list.d", "etc/preferences.d", "etc/apt.conf.d", "state/lists/partial",
                "cache/archives/partial"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    (top / "etc/sources.list.d/debian.sources").write_text(debian_sources())
    (top / "state/status").touch()
    config = top / "apt.conf"
    config.write_text("\n".join([
        f'APT::Architecture "{arch.debian}";', f'APT::Architectures {{ "{arch.debian}"; }};',
        f'Dir::Etc "{top}/etc";', 'Dir::Etc::sourcelist "/dev/null";',
        f'Dir::Etc::sourceparts "{top}/etc/sources.list.d";',
        f'Dir::State "{top}/state";', f'Dir::State::status "{top}/state/status";', f'Dir::Cache "{top}/cache";',
        'APT::Install-Recommends "false";', 'APT::Sandbox::User "root";', ""]))
    return {**os.environ, "APT_CONFIG": str(config), "DEBIAN_FRONTEND": "noninteractive"}


def download_packages(arch: Arch) -> list[Path]:
    """The .deb files of `arch.packages` and everything they depend on (an empty dpkg status: all of it)."""
    env = private_apt(arch)
    for _ in range(3):  # a mirror caught mid-sync fails one index; it is right again a little later
        update = subprocess.run(["apt-get", "-q", "-q", "update"], env=env, capture_output=True, text=True)
        if update.returncode == 0:
            break
        time.sleep(10)
    else:  # apt keeps what it could fetch: the packages still come from bookworm, maybe without the last fixes
        log("apt-get update failed for some indexes, going on with the others:\n" + update.stderr.strip())
    subprocess.run(["apt-get", "-q", "-q", "-y", "install", "--download-only", *arch.packages], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    plan = subprocess.run(["apt-get", "-q", "-q", "-y", "install", "--simulate", *arch.packages], env=env, check=True,
                          capture_output=True, text=True).stdout
    archives = cache_dir() / f"apt-{arch.debian}" / "cache" / "archives"
    debs = []
    for name, version, where in re.findall(r"^Inst (\S+) \((\S+) .*?\[(\w+)\]\)", plan, re.M):
        debs.append(archives / f"{name}_{version.replace(':', '%3a')}_{where}.deb")  # as apt names its downloads
    missing = [deb.name for deb in debs if not deb.is_file()]
    if missing or not debs:
        raise RuntimeError(f"apt downloaded no {', '.join(missing) or 'packages'} into {archives}")
    return debs


def unpack(debs: list[Path], root: Path, arch: Arch) -> None:
    """`dpkg -x` every package, then the links dpkg's maintainer scripts would make (BLAS/LAPACK alternatives)."""
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    for library in root.glob("usr/lib/*/*/lib*.so.3"):  # e.g. usr/lib/arm-linux-gnueabihf/blas/libblas.so.3
        link = library.parent.parent / library.name
        if library.parent.name in ("blas", "lapack") and not link.exists():
            link.symlink_to(f"{library.parent.name}/{library.name}")


def userland(arch_name: str) -> dict[str, Path]:
    """{core: root folder} for one architecture, built once and cached; each root shows its Pi's /proc/cpuinfo."""
    arch = ARCHES[arch_name]
    key = key_of(SUITE, arch.debian, arch.packages, {c: CORES[c].cpuinfo for c in arch.cores})
    base = cache_dir() / f"root-{arch.debian}-{key}"
    roots = {core: base.with_name(f"{base.name}-{core}") for core in arch.cores}
    if all((root / ".complete").is_file() for root in roots.values()):
        return roots
    log(f"building the Debian {SUITE} {arch.debian} userland in {base} ...")
    debs = download_packages(arch)
    for old in [base, *roots.values()]:
        shutil.rmtree(old, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix=f".{base.name}.", dir=cache_dir()))
    unpack(debs, building, arch)
    (building / "packages.txt").write_text("".join(f"{deb.name}\n" for deb in debs))
    building.rename(base)
    for core, root in roots.items():
        subprocess.run(["cp", "-al", str(base), str(root)], check=True)  # hard links: seconds, no extra space
        (root / "proc").mkdir(exist_ok=True)
        (root / "proc" / "cpuinfo").write_text(CORES[core].cpuinfo)
        (root / ".complete").write_text(f"{arch.debian} {core}\n")
    log(f"{len(debs)} Debian packages unpacked")
    return roots


# ---------------------------------------------------------------- wheels of another platform


def manylinux_tags(machine: str, glibc_minor: int = 36) -> list[str]:
    """Every manylinux tag a bookworm (glibc 2.36) machine accepts; one tag alone makes pip settle for old wheels."""
    return [f"manylinux_2_{minor}_{machine}" for minor in range(glibc_minor, 16, -1)] + [f"manylinux2014_{machine}"]


def pip_for(machine: str, python: str = "3.11") -> list[str]:
    """`pip install` for another machine's CPython, binary wheels only."""
    platforms = [flag for tag in manylinux_tags(machine) for flag in ("--platform", tag)]
    return [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:",
            *platforms, "--python-version", python, "--implementation", "cp", "--abi", "cp" + python.replace(".", "")]


def wheelhouse(machine: str, requirements: tuple[str, ...]) -> Path:
    """The wheels of `requirements` and their dependencies for `machine`, downloaded once (pinned: keyed by them)."""
    folder = cache_dir() / f"wheels-{machine}-{key_of(machine, requirements)}"
    if (folder / ".complete").is_file():
        return folder
    log(f"downloading {machine} wheels: {' '.join(requirements)}")
    shutil.rmtree(folder, ignore_errors=True)
    command = pip_for(machine)
    command[3] = "download"  # pip download takes the same platform flags
    subprocess.run([*command[:4], "-d", str(folder), *command[4:], *requirements], check=True)
    (folder / ".complete").write_text("\n".join(requirements) + "\n")
    return folder


def install_target(machine: str, wheels: Path, target: Path, requirements: list[str], deps: bool = True) -> None:
    """pip (on this PC) resolves `requirements` from `wheels` alone, for `machine`, into the folder `target`."""
    flags = [] if deps else ["--no-deps"]
    subprocess.run([*pip_for(machine), "--no-index", "--find-links", str(wheels), "--target", str(target), *flags,
                    *requirements], check=True)


# ---------------------------------------------------------------- running


def run(arch_name: str, root: Path, core: str, argv: list[str], env: dict[str, str] | None = None,
        timeout: float = 1800, python: str | Path | None = None, cwd: str | Path | None = None
        ) -> subprocess.CompletedProcess:
    """`python argv...` inside the userland `root`, emulated as `core`; the emulator is called directly."""
    arch = ARCHES[arch_name]
    clean = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root"),
             "QEMU_CPU": CORES[core].qemu_cpu, "PYTHONDONTWRITEBYTECODE": "1",
             "PIP_CONFIG_FILE": os.devnull,  # pip in the userland: not this PC's pip.conf
             "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}
    interpreter = str(python or root / PYTHON)
    return subprocess.run([arch.qemu, "-L", str(root), interpreter, *argv], env=clean, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


if __name__ == "__main__":
    for name in ARCHES:
        for core, root in userland(name).items():
            done = run(name, root, core, ["-c", "import platform, sys; print(platform.machine(), sys.version)"])
            print(f"{name} as {core} ({CORES[core].pi}): {root}  python {done.stdout.strip()}")
