"""Run on the emulated Pi by pi/test_arm.py: the whole MNIST test set through each backend, as JSON.

python armcheck.py EXPORT_DIR IMAGES.npy LABELS.npy OUT_DIR BACKEND:PRECISION...

Imports only what a Pi has (the installed digitpi, numpy, Pillow, maybe onnxruntime). onnxruntime
is never imported here directly: the runtime decides whether it may be (digitpi.onnxprobe). Each
variant's labels go to OUT_DIR/BACKEND-PRECISION.npy for the PC to compare with its own.
"""

import importlib.metadata
import importlib.util
import json
import platform
import sys
import time

import numpy as np

from digitpi.runtime import Classifier


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    model, images, labels, out, *variants = sys.argv[1:]
    x, y = np.load(images), np.load(labels)
    report = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
              "pillow": version("Pillow") or version("pillow"), "onnxruntime": version("onnxruntime"), "runs": []}
    for variant in variants:
        backend, precision = variant.split(":")
        start = time.monotonic()
        classifier = Classifier.load(model, precision=precision, backend=backend)
        predicted = classifier.predict(x).labels
        np.save(f"{out}/{backend}-{precision}.npy", predicted)
        report["runs"].append({"variant": variant, "backend": classifier.backend_name,
                               "precision": classifier.precision, "accuracy": float((predicted == y).mean()),
                               "images": len(y), "emulated_seconds": round(time.monotonic() - start, 1)})
    report["torch_installed"] = importlib.util.find_spec("torch") is not None
    report["torch_imported"] = "torch" in sys.modules
    print(json.dumps(report))


if __name__ == "__main__":
    main()
