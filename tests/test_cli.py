"""The `digitpi` command as a whole: every subcommand explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from digitpi.cli import build_parser, main

COMMANDS = ["data", "summary", "train", "evaluate", "compare", "export", "serve", "service", "predict", "watch",
            "import-keras", "samples", "samples list", "samples stats", "samples export", "samples import",
            "samples delete", "finetune", "bench train", "bench infer", "bench serve", "bench preprocess", "bench wild",
            "bench watch", "bench finetune"]


def test_every_command_is_listed() -> None:
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert sorted(subcommands) == sorted({c.split()[0] for c in COMMANDS})


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: digitpi {command}")


STARTUP = """
import sys
from digitpi import cli
cli.build_parser(["predict", "--model", "DIR", "a.png"])
try:
    cli.main(["--help"])
except SystemExit:
    pass
heavy = ("torch", "PIL", "numpy", "matplotlib", "onnxruntime", "safetensors", "fastapi")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith("digitpi.bench.")
             or m in ("digitpi.preprocess", "digitpi.runtime", "digitpi.data")))
"""


def test_building_the_parser_imports_nothing_heavy() -> None:
    """`digitpi --help`, and the parser `digitpi predict` builds, import no benchmark, torch, numpy or Pillow:
    a Pi starts Python slowly, and each command imports what it needs itself."""
    done = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("\n[]")  # after the help text


def test_a_benchmarks_flags_come_with_it(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "infer", "--help"])
    assert "--backends" in capsys.readouterr().out
