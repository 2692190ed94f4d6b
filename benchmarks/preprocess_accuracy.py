"""Accuracy of preprocessing + model on real-looking pictures of the whole MNIST test set, per variant,
and on rows of 2-6 digits: the README's table. It measures with the same functions, on the same
pictures, as the tests that assert thresholds on them (digitpi.bench.realistic), only over more rows.

    python benchmarks/preprocess_accuracy.py EXPORT_DIR [ROWS]   (needs DIGITPI_DATA_DIR or the cache)
"""

from __future__ import annotations

import sys
import time

import numpy as np

from digitpi import data, runtime
from digitpi.bench.realistic import VARIANTS, read_rows, variant_accuracy


def main() -> None:
    folder, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    classifier = runtime.Classifier.load(folder)
    images, labels = data.load_split("mnist", "test")
    print(f"{folder}: clean test set {100 * (classifier.predict(images).labels == labels).mean():.2f} %")
    for look, variant in VARIANTS.items():
        start = time.perf_counter()
        accuracy, unread = variant_accuracy(classifier, images, labels, variant, np.random.default_rng(0))
        print(f"  {look}: {100 * accuracy:.2f} % ({unread} unread, {time.perf_counter() - start:.0f} s)", flush=True)
    rows = read_rows(classifier, images, labels, count, np.random.default_rng(1))
    print(f"  rows of 2-6 ({count}): split right {100 * rows['split_right'] / count:.1f} %, read exactly "
          f"{100 * rows['read_exactly'] / count:.1f} % (ceiling from clean digits {100 * rows['ceiling']:.1f} %), "
          f"same as clean reading {100 * rows['as_clean'] / count:.1f} %")


if __name__ == "__main__":
    main()
