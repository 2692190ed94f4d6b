"""digitpi: train a handwritten-digit classifier on a PC, read digits with it on a Raspberry Pi.

Importing the package imports nothing heavy (no numpy, no torch): the Pi side (runtime, preprocess, serve)
must work without torch, and `digitpi --help` must start fast; `read` imports what it needs when called.

    >>> import digitpi
    >>> digitpi.read("photo.jpg").digit                        # one digit, with the model `make main` exports
    7
    >>> print(digitpi.read("page.png", model="runs/default/export", page=True))   # a page: a line per line
    120
    4567
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from digitpi.reader import Page, Reading
    from digitpi.runtime import Classifier

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake of the user's (bad flag, missing file): shown as one line, never a traceback."""


def one_line(e: BaseException, limit: int = 120) -> str:
    """An exception's message on one line (whitespace collapsed, cut to `limit` characters), or its
    type's name when it has none: what goes into a one-line error about a file that broke a library."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read(picture, model: str | Path | Classifier | None = None, page: bool = False) -> Reading | Page:
    """Read one digit, or with `page=True` every digit of a page, from a picture (a path, bytes, an image...)
    with an export folder (None: `runs/default/export`, which `make main` writes): see `digitpi.reader.read`."""
    from digitpi import reader

    return reader.read(picture, model, page)
