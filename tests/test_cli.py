"""The `digitpi` command as a whole: every command explains itself, it starts light, and ends quietly."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from digitpi import __version__
from digitpi.cli import build_parser, main


def command_paths(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the real parser, sub-subcommands included: a new one is covered without a word here."""
    parser = parser or build_parser()
    paths = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*path, name))
    return paths


COMMANDS = command_paths()


def test_the_walk_finds_every_command() -> None:
    """The walk is what makes the help test complete: it must reach a benchmark, two levels down."""
    assert {("train",), ("bench",), ("bench", "train"), ("bench", "infer")} <= set(COMMANDS)
    assert len(COMMANDS) >= 14


@pytest.mark.parametrize("command", COMMANDS, ids=lambda path: " ".join(path) or "digitpi")
def test_help(command: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: digitpi {' '.join(command)}".rstrip()) and not err
    assert "%%" not in out  # a percent sign shows as one


def test_version_and_python_m() -> None:
    """`python -m digitpi` is the command; `--version` is the installed package's version."""
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "digitpi", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"digitpi {version('digitpi')}\n" == f"digitpi {__version__}\n"
    listed = subprocess.run([sys.executable, "-m", "digitpi", "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.startswith("usage: digitpi ")


def test_a_closed_pipe_ends_quietly(fast_export, mnist_test, tmp_path) -> None:
    """`digitpi predict ... | head`: once the reader is gone, no "Broken pipe" error, no traceback."""
    from PIL import Image

    images = []
    for i in range(3):
        Image.fromarray(mnist_test[0][i]).save(tmp_path / f"{i}.png")
        images.append(str(tmp_path / f"{i}.png"))
    reader, writer = os.pipe()
    os.close(reader)  # the reader left before the first line: every write meets a closed pipe
    done = subprocess.run([sys.executable, "-m", "digitpi", "predict", "--model", str(fast_export), *images],
                          stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(writer)
    assert done.stderr == "" and done.returncode == 0  # as `digitpi watch ... | head -1` ends


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
