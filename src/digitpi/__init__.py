"""digitpi: train a handwritten-digit classifier on a PC, read digits with it on a Raspberry Pi.

Importing the package imports nothing heavy: the Pi side (runtime, preprocess, serve) must work
without torch, so training modules are imported only where they are used.
"""

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake of the user's (bad flag, missing file): shown as one line, never a traceback."""
