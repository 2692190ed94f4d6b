"""`digitpi.read(picture)`: the one call that reads a picture with an exported model, for a script or a notebook.

The same steps as `digitpi predict`: `preprocess` frames one digit, `layout` finds the digits of a page, the
runtime classifier reads them. numpy, Pillow and onnxruntime (or NumPy) only: it runs on the Raspberry Pi.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitpi import UserError, layout, preprocess
from digitpi.runtime import Classifier

DEFAULT_MODEL = Path("runs/default/export")  # what `make main` exports, relative to where it was run


@dataclass(frozen=True)
class Reading:
    """One digit as the model read it."""

    digit: int  # the most probable class, 0-9
    probability: float  # its probability
    probabilities: tuple[float, ...]  # of each class, 0-9
    image: np.ndarray  # uint8 (28, 28): what the model saw
    box: tuple[int, int, int, int] | None  # on a page: left, top, right, bottom (exclusive) in its pixels

    def __str__(self) -> str:
        return str(self.digit)


@dataclass(frozen=True)
class Page:
    """The digits of a page as written: lines top to bottom, each read left to right."""

    lines: list[list[Reading]]

    @property
    def text(self) -> str:
        """The digits, a line of text per written line: "120\\n4567"."""
        return "\n".join("".join(str(reading) for reading in line) for line in self.lines)

    def __str__(self) -> str:
        return self.text


def load(model: str | Path | Classifier) -> Classifier:
    if isinstance(model, Classifier):
        return model
    if Path(model) == DEFAULT_MODEL and not DEFAULT_MODEL.is_dir():
        raise UserError(f"no model in {DEFAULT_MODEL} (relative to {Path.cwd()}): run `make main` there, "
                        "or pass model=EXPORT_DIR")
    return Classifier.load(model)


def readings(classifier: Classifier, images: list[np.ndarray],
             boxes: list[tuple[int, int, int, int] | None]) -> list[Reading]:
    labels, probabilities = classifier.predict(np.stack(images))
    return [Reading(int(label), float(p[label]), tuple(float(x) for x in p), image, box)
            for label, p, image, box in zip(labels, probabilities, images, boxes)]


Model = str | Path | Classifier | None  # an export folder, a loaded classifier, or None for DEFAULT_MODEL


def read(picture: preprocess.Source, model: Model = None, page: bool = False) -> Reading | Page:
    """Read one digit (`page=False`) or every digit of a page (`page=True`) from `picture`.

    `picture`: a file path, bytes, a file object, a PIL image or a numpy array; a photo, a scan or a drawing.
    `model`: an export folder (`digitpi export`), None for the one `make main` writes (DEFAULT_MODEL); or a
    `Classifier` loaded once (`digitpi.runtime.Classifier.load(DIR)`) when reading many pictures.
    A picture with no digit raises `preprocess.NoDigitError`, one that is no picture `preprocess.ImageError`.
    """
    classifier = load(DEFAULT_MODEL if model is None else model)
    if not page:
        return readings(classifier, [preprocess.to_mnist(picture)], [None])[0]
    lines = layout.read_page(picture)
    flat = readings(classifier, [digit.image for line in lines for digit in line],
                    [digit.box for line in lines for digit in line])
    starts = np.cumsum([0] + [len(line) for line in lines])
    return Page([flat[start:end] for start, end in zip(starts[:-1], starts[1:])])
