"""digitpi: train a handwritten-digit classifier on a PC, read digits with it on a Raspberry Pi.

Importing the package imports nothing heavy (no numpy, no torch): the Pi side (runtime, preprocess, serve)
must work without torch, and `digitpi --help` must start fast; `read` imports what it needs when called.

    >>> import digitpi
    >>> digitpi.read("photo.jpg").label                          # one digit, with the model `make main` exports
    '7'
    >>> print(digitpi.read("page.png", model="runs/default/export", page=True).text)   # a page, line by line
    120
    4567
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from digitpi.preprocess import Source
    from digitpi.reading import Digit, Page
    from digitpi.runtime import Classifier

__version__ = "0.1.0"

# onnxruntime's Linux wheels (1.29 on) queue events about the machine and the process for Microsoft and keep a
# device id under ~/.cache. A digit reader has no business sending them: off before any onnxruntime import reads
# it, unless the user's environment says otherwise (ORT_DISABLE_TELEMETRY=0).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

DEFAULT_MODEL = Path("runs/default/export")  # what `make main` exports, relative to where it ran


class UserError(Exception):
    """A mistake of the user's (bad flag, missing file): shown as one line, never a traceback."""


def one_line(e: BaseException, limit: int = 120) -> str:
    """An exception's message on one line (whitespace collapsed, cut to `limit` characters), or its
    type's name when it has none: what goes into a one-line error about a file that broke a library."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read(picture: Source, model: str | Path | Classifier | None = None, page: bool = False) -> Digit | Page:
    """Read one digit from `picture`, or with `page=True` every digit of a page (a `reading.Page`, line by line).

    `picture`: a file path, bytes, a file object, a PIL image or a numpy array; a photo, a scan or a drawing.
    `model`: an export folder (`digitpi export`), None for DEFAULT_MODEL, or a `runtime.Classifier` loaded once
    when reading many pictures. The answer is what `digitpi predict` prints: `reading.Digit` (label,
    probability, top(k), the 28x28 image the model saw) or `reading.Page`. A picture with no digit raises
    `preprocess.NoDigitError`, one that is no picture `preprocess.ImageError`.
    """
    from digitpi import reading, runtime

    if model is None and not DEFAULT_MODEL.is_dir():
        raise UserError(f"no model in {DEFAULT_MODEL} (relative to {Path.cwd()}): run `make main` there, "
                        "or pass model=EXPORT_DIR")
    classifier = model if isinstance(model, runtime.Classifier) else runtime.Classifier.load(model or DEFAULT_MODEL)
    answer = reading.read(classifier, picture, page=page)
    return answer if page else answer.digits[0]
