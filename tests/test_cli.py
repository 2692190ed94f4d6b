"""The `digitpi` command as a whole: every subcommand explains itself."""

from __future__ import annotations

import pytest

from digitpi.cli import build_parser, main

COMMANDS = ["data", "summary", "train", "evaluate", "compare", "export", "serve", "predict", "import-keras",
            "bench train", "bench infer", "bench serve", "bench preprocess"]


def test_every_command_is_listed() -> None:
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert sorted(subcommands) == sorted({c.split()[0] for c in COMMANDS})


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: digitpi {command}")
