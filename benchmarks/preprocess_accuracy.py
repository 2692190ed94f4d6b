"""Accuracy of preprocessing + model on real-looking pictures of the whole MNIST test set, per variant,
and on rows of 2-6 digits: the README's table. The tests assert thresholds on the same pictures.

    python benchmarks/preprocess_accuracy.py EXPORT_DIR [ROWS]   (needs DIGITPI_DATA_DIR or the cache)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from realistic import VARIANTS, Variant, render, row_of  # noqa: E402

from digitpi import data, preprocess, runtime  # noqa: E402

BATCH = 500  # pictures preprocessed before one predict call
ROW = Variant(canvas=(1152, 320), scale=(4.0, 6.0), rotate=3.0, paper=(160.0, 240.0), ink=(0.1, 0.4),
              gradient=0.3, shadow=0.3, noise=4.0, quality=(70, 90))  # as tests/test_preprocess.py


def variant_accuracy(classifier, images: np.ndarray, labels: np.ndarray, variant: Variant) -> tuple[float, int]:
    """(accuracy, pictures with no digit found) over every image printed as `variant`."""
    rng = np.random.default_rng(0)
    correct = unread = 0
    for first in range(0, len(images), BATCH):
        batch = []
        for picture in render(images[first:first + BATCH], variant, rng):
            try:
                batch.append(preprocess.to_mnist(picture))
            except preprocess.NoDigitError:
                batch.append(np.zeros((28, 28), np.uint8))  # counts as an error
                unread += 1
        correct += int((classifier.predict(np.stack(batch)).labels == labels[first:first + BATCH]).sum())
    return correct / len(images), unread


def rows_accuracy(classifier, images: np.ndarray, labels: np.ndarray, count: int) -> dict[str, float]:
    clean = classifier.predict(images).labels
    rng = np.random.default_rng(1)
    picks = [rng.choice(len(images), size=rng.integers(2, 6, endpoint=True), replace=False) for _ in range(count)]
    split_ok = exact = as_clean = 0
    for pick in picks:
        digits = preprocess.split_digits(next(render(row_of(images[pick], rng, gap=(1, 8))[None], ROW, rng)))
        if len(digits) != len(pick):
            continue
        split_ok += 1
        read = classifier.predict(np.stack(digits)).labels
        exact += bool((read == labels[pick]).all())
        as_clean += bool((read == clean[pick]).all())
    ceiling = float(np.mean([np.prod((clean == labels)[p]) for p in picks]))
    return {"split right": split_ok / count, "read exactly": exact / count, "ceiling": ceiling,
            "same as clean": as_clean / count}


def main() -> None:
    folder, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    classifier = runtime.Classifier.load(folder)
    images, labels = data.load_split("mnist", "test")
    print(f"{folder}: clean test set {100 * (classifier.predict(images).labels == labels).mean():.2f} %")
    for look, variant in VARIANTS.items():
        start = time.perf_counter()
        accuracy, unread = variant_accuracy(classifier, images, labels, variant)
        print(f"  {look}: {100 * accuracy:.2f} % ({unread} unread, {time.perf_counter() - start:.0f} s)", flush=True)
    rows = rows_accuracy(classifier, images, labels, count)
    print(f"  rows of 2-6 ({count}): split right {100 * rows['split right']:.1f} %, read exactly "
          f"{100 * rows['read exactly']:.1f} % (ceiling from clean digits {100 * rows['ceiling']:.1f} %), "
          f"same as clean reading {100 * rows['same as clean']:.1f} %")


if __name__ == "__main__":
    main()
