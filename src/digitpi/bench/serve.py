"""`digitpi bench serve`: placeholder until the benchmark lands. Keep top-level imports torch-free."""

import argparse

from digitpi import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark (besides --json)."""


def run(args: argparse.Namespace) -> None:
    raise UserError("digitpi bench serve is not built yet")
