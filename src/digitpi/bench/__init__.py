"""Benchmarks behind `digitpi bench train|infer|serve|preprocess|wild|watch`: printed tables, ratios against references
measured in the same run, `--json` for machines. Speed targets live here, never in unit tests.

Each submodule has `add_arguments(parser)` and `run(args)`; the CLI imports one only when asked.
"""

import platform
from pathlib import Path

BENCHMARKS = {
    "train": "time to 99 % test accuracy and final accuracy of our recipes against references",
    "infer": "latency, throughput, memory and size of exported models per backend",
    "serve": "requests/s and latency of a running `digitpi serve`",
    "preprocess": "milliseconds from a photo, scan or drawing to the model's 28x28 input",
    "wild": "accuracy on real handwriting (photos, canvas drawings, scans, pages) per medium, misreads drawn",
    "watch": "frames per second of `digitpi watch` at 640x480 on one core (needs the [camera] extra)",
    "finetune": "accuracy on one real writer (wild-dev) before and after teaching a run a few of their digits",
}


def cpu_name() -> str:
    """The processor's model name, for the machine line of every benchmark table."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()
