"""One picture read by one exported model: its digits line by line, how sure the model is, where they are.

`digitpi predict`, `digitpi serve` and the Python API all answer with this, so a reading means the
same everywhere. numpy, Pillow and the runtime only: it runs on the Raspberry Pi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digitpi import layout, preprocess
from digitpi.preprocess import Source

Box = layout.Box  # in the picture's own pixels, upright


@dataclass(frozen=True)
class Digit:
    """One digit as the model read it."""

    index: int  # the most probable class
    probabilities: np.ndarray  # float32 (classes,): softmax of the logits
    image: np.ndarray  # uint8 (28, 28): what the model saw
    box: Box | None  # where it is on the picture (None when the whole picture is one digit)
    classes: tuple[str, ...]  # the model card's class names ("0" ... "9")

    @property
    def label(self) -> str:
        return self.classes[self.index]

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.index])

    def top(self, k: int) -> list[tuple[str, float]]:
        """The `k` most probable classes (name, probability), most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]


@dataclass(frozen=True)
class Page:
    """A picture's digits as written: lines top to bottom, digits left to right."""

    lines: list[list[Digit]]

    @property
    def digits(self) -> list[Digit]:
        return [digit for line in self.lines for digit in line]

    @property
    def text(self) -> str:
        """The digits read, one written line per text line."""
        return "\n".join(line_text(line) for line in self.lines)


def line_text(line: list[Digit]) -> str:
    return "".join(digit.label for digit in line)


def line_probability(digits: list[Digit]) -> float:
    """The probability that every digit is read right, if the model's errors were independent."""
    return float(np.prod([digit.probability for digit in digits]))


def look(source: Source, page: bool = False, name: str | None = None,
         s: preprocess.Settings = preprocess.SETTINGS, classifier=None) -> list[list[tuple[np.ndarray, Box | None]]]:
    """What the model will see of `source`: the 28x28 image (and box) of each digit, line by line.
    On a page, `classifier` judges where digits written touching are cut (`layout.judged_cuts`).
    A picture without a digit raises `preprocess.NoDigitError`, one that is not a picture
    `preprocess.ImageError`; both name the source as `preprocess` does."""
    if page:
        judge = None if classifier is None else lambda images: classifier.predict(images).probabilities.max(axis=1)
        return [[(digit.image, digit.box) for digit in line]
                for line in layout.read_page(source, s, name=name, judge=judge)]
    return [[(preprocess.to_mnist(source, s, name=name), None)]]


def classify(classifier, seen: list[list[tuple[np.ndarray, Box | None]]]) -> Page:
    """`look`'s digits read by `classifier` (a `runtime.Classifier`), in one batch."""
    labels, probabilities = classifier.predict(np.stack([image for line in seen for image, _ in line]))
    flat, classes = iter(zip(labels, probabilities)), tuple(classifier.classes)
    return Page([[Digit(int(label), p, image, box, classes) for (image, box), (label, p) in zip(line, flat)]
                 for line in seen])


def read(classifier, source: Source, page: bool = False, name: str | None = None) -> Page:
    """Read `source` with `classifier`: one digit, or with `page` every digit of a page, line by line."""
    return classify(classifier, look(source, page, name, classifier=classifier))
