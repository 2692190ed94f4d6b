"""digitpi: train a handwritten-digit classifier on a PC, read digits with it on a Raspberry Pi.

Importing the package imports nothing heavy: the Pi side (runtime, preprocess, serve) must work
without torch, so training modules are imported only where they are used.
"""

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake of the user's (bad flag, missing file): shown as one line, never a traceback."""


def one_line(e: BaseException, limit: int = 120) -> str:
    """An exception's message on one line (whitespace collapsed, cut to `limit` characters), or its
    type's name when it has none: what goes into a one-line error about a file that broke a library."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
