"""`digitpi service`: a systemd unit that starts `digitpi serve` when the Raspberry Pi boots.

The unit runs the server as an ordinary user, restarts it when it fails, and bounds its memory so a
runaway request cannot starve a 512 MB Pi. Printed to stdout (pipe it to `sudo tee`), or written to a
file with --out. No systemd is needed to write it, so it runs on the PC too; `systemd-analyze verify`
checks it (tests/test_service.py).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from digitpi import UserError
from digitpi.exportdir import PRECISIONS

UNIT_NAME = "digitpi.service"
# `digitpi serve` with onnxruntime stays near 100 MB resident (95 MB measured on x86 after requests);
# uploads are capped at 2 MiB. Above MemoryHigh the kernel reclaims hard; at MemoryMax the server is
# killed and restarted. 256 MB leaves a Pi Zero 2 W (512 MB) room for everything else.
MEMORY_HIGH = "200M"
MEMORY_MAX = "256M"
RESTART_SEC = 5  # seconds between a failure and the next start; retried for ever (StartLimitIntervalSec=0)


@dataclass(frozen=True)
class ServiceConfig:
    model_dir: Path  # absolute: systemd starts the server in another working directory
    user: str  # who the server runs as; never needs root
    host: str = "0.0.0.0"  # every interface: the point of a Pi on a desk is to be reached from the network
    port: int = 8000
    precision: str | None = None  # None: the runtime's default (int8, or fp32 where an old int8 file misreads)


def command_line(executable: list[str], config: ServiceConfig) -> list[str]:
    argv = [*executable, "serve", "--model", str(config.model_dir), "--host", config.host, "--port", str(config.port)]
    return argv + (["--precision", config.precision] if config.precision else [])


def plain(value: str) -> str:
    """A value systemd takes literally but for its %-specifiers (WorkingDirectory=, User=)."""
    if any(c in value for c in "\n\r\0"):
        raise UserError(f"a systemd unit cannot hold {value!r}")
    return value.replace("%", "%%")


def quote(word: str) -> str:
    """One word of ExecStart= as systemd splits it: %, $ and \\ escaped, quoted when it holds spaces or quotes."""
    word = plain(word).replace("\\", "\\\\").replace("$", "$$")
    if any(c in word for c in " \t\"'"):
        return '"' + word.replace('"', '\\"') + '"'
    return word


def this_digitpi() -> list[str]:
    """How to start the digitpi that is running now: its console script beside the interpreter (a venv's
    bin/), else the interpreter itself with `-m digitpi`."""
    script = Path(sys.executable).with_name("digitpi")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "digitpi"]


def unit_text(config: ServiceConfig, executable: list[str]) -> str:
    exec_start = " ".join(quote(word) for word in command_line(executable, config))
    return f"""\
# digitpi: the drawing page and HTTP API (`digitpi serve`) started at boot. Written by `digitpi service`.
# Install:  sudo tee /etc/systemd/system/{UNIT_NAME} < this-file
#           sudo systemctl daemon-reload && sudo systemctl enable --now {UNIT_NAME.removesuffix('.service')}
# Logs:     journalctl -u {UNIT_NAME.removesuffix('.service')}
[Unit]
Description=digitpi: read handwritten digits over HTTP on port {config.port}
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=exec
User={plain(config.user)}
WorkingDirectory={plain(str(config.model_dir))}
Environment=PYTHONUNBUFFERED=1
ExecStart={exec_start}
Restart=on-failure
RestartSec={RESTART_SEC}
MemoryHigh={MEMORY_HIGH}
MemoryMax={MEMORY_MAX}
NoNewPrivileges=yes
ProtectSystem=full

[Install]
WantedBy=multi-user.target
"""


# ---------------------------------------------------------------- the command


def default_user() -> str:
    """The user who asked, also under sudo: the server should not run as root."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="an exported model folder (`digitpi export`)")
    parser.add_argument("--user", help="who the server runs as (default: you, also under sudo)")
    parser.add_argument("--host", default=ServiceConfig.host,
                        help=f"address to listen on (default: {ServiceConfig.host}, every interface)")
    parser.add_argument("--port", type=int, default=ServiceConfig.port,
                        help=f"TCP port (default: {ServiceConfig.port})")
    parser.add_argument("--precision", choices=PRECISIONS, help="which exported model to run (default: the runtime's)")
    parser.add_argument("--out", metavar="FILE", help=f"write the unit here (e.g. /etc/systemd/system/{UNIT_NAME}) "
                                                      "instead of printing it")


def run(args: argparse.Namespace) -> None:
    from digitpi import files
    from digitpi.runtime import read_card

    model_dir = Path(args.model).expanduser().resolve()
    if not model_dir.is_dir():
        raise UserError(f"no export folder {args.model}")
    read_card(model_dir)  # a folder without a model card fails now, not at boot
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    config = ServiceConfig(model_dir, args.user or default_user(), args.host, args.port, args.precision)
    text = unit_text(config, this_digitpi())
    if args.out:
        files.write_atomic(Path(args.out), text.encode())
        os.chmod(args.out, 0o644)  # a unit file is read by systemd and shown by `systemctl cat` to anyone
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
