"""`digitpi bench infer`: latency, throughput, memory and size of exported models, per backend.

Each measurement runs in its own fresh process, so one backend's imports, thread pools and
allocations never colour another's numbers, and thread counts are set before anything loads:
- batch-1 latency (p50, p99) on one thread: one digit at a time, as a Pi reading a camera;
- throughput at batch 256 on one and on two threads (median of repeated batches);
- peak resident memory (VmHWM, else ru_maxrss) of a process that only imports the runtime, loads the model
  and predicts one digit: what a Pi must have free. The torch row imports torch instead.
Every timing covers `predict` from uint8 pixels to probabilities, scaling and softmax included.
Top-level imports are torch-free: torch is only imported inside the torch worker process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from digitpi import UserError, rundir
from digitpi.bench import cpu_name
from digitpi.exportdir import CARD, VARIANTS, Variant


def backend_name(variant: Variant) -> str:
    """A variant as this benchmark's tables name it: onnx-fp32, onnx-int8, numpy."""
    return f"onnx-{variant.name}" if variant.backend == "onnxruntime" else variant.backend


VARIANT_OF = {backend_name(v): v for v in VARIANTS}
BACKENDS = ("torch", *VARIANT_OF)  # torch: the PC-side reference, the runs' own weights
BATCH = 256  # images per throughput call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark (besides --json)."""
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help=f"export folders (default: every runs/*/export holding a {CARD})")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated subset of {','.join(BACKENDS)} (default: all)")
    parser.add_argument("--calls", type=int, default=2000, help="batch-1 calls timed per backend (default: 2000)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="time spent on batch-256 calls per backend and thread count (default: 2)")
    parser.add_argument("--data-dir", help="folder holding the MNIST IDX files (test digits to predict)")


# ---------------------------------------------------------------- inside a worker process


def source_runs(card: dict) -> list[Path]:
    """The run folders an export came from: one, or an ensemble's members (none for a card without them)."""
    source = card.get("source", {})
    return [Path(run) for run in source.get("runs") or ([source["run"]] if "run" in source else [])]


def make_predictor(folder: str, backend: str, threads: int):
    """A function uint8 (N, 28, 28) -> probabilities (N, 10) for one backend."""
    if backend == "torch":
        import torch

        from digitpi import train
        from digitpi.evaluate import load_runs
        from digitpi.runtime import read_card

        torch.set_num_threads(threads)
        model, _ = load_runs(source_runs(read_card(folder)))

        @torch.no_grad()
        def predict(images):
            return torch.softmax(model(train.to_float(torch.from_numpy(images))), dim=1).numpy()

        return predict
    from digitpi.runtime import Classifier

    variant = VARIANT_OF[backend]
    classifier = Classifier.load(folder, precision=variant.precision, backend=variant.backend, threads=threads)
    return lambda images: classifier.predict(images).probabilities


def time_calls(predict, images, min_calls: int, seconds: float) -> list[float]:
    """Seconds per call, at least `min_calls` calls and about `seconds` in total."""
    import time

    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < seconds and len(times) < 100_000):
        t = time.perf_counter()
        predict(images)
        times.append(time.perf_counter() - t)
    return times


def worker(folder: str, backend: str, threads: int, images_path: str, calls: int, seconds: float) -> dict:
    """Latency (one thread only) and throughput of one backend, run in a fresh process."""
    import numpy as np

    images = np.load(images_path, allow_pickle=False)
    predict = make_predictor(folder, backend, threads)
    for i in range(20):  # warm-up: first calls allocate and pick kernels
        predict(images[i:i + 1])
        predict(images[:BATCH])
    result: dict = {}
    if threads == 1:
        one = np.array([time_calls(predict, images[i % len(images)][None], 1, 0)[0] for i in range(calls)])
        result |= {"p50_ms": 1e3 * float(np.percentile(one, 50)), "p99_ms": 1e3 * float(np.percentile(one, 99))}
    batch = time_calls(predict, images[:BATCH], 3, seconds)
    result[f"images_per_s_{threads}t"] = BATCH / float(np.median(batch))
    return result


# Linux keeps ru_maxrss across exec, so a child started by a big parent reports the parent's peak;
# VmHWM belongs to the new process image alone. ru_maxrss is the fallback off Linux.
RSS_SCRIPT = """
import resource, sys
import numpy as np
from digitpi.bench.infer import make_predictor
predict = make_predictor(sys.argv[1], sys.argv[2], 1)
predict(np.load(sys.argv[3], allow_pickle=False)[:1])
try:
    status = open("/proc/self/status").read()
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))  # KiB
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux, bytes on macOS
"""

WORKER_SCRIPT = """
import json, sys
from digitpi.bench.infer import worker
print(json.dumps(worker(*json.loads(sys.argv[1]))))
"""


# ---------------------------------------------------------------- the parent


def run_python(script: str, *args: str, threads: int = 1) -> str:
    """Run `script` in a fresh interpreter whose math libraries use `threads` threads."""
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"benchmark worker failed: {last}")
    return done.stdout.strip().splitlines()[-1]


def export_dirs(dirs: list[str]) -> list[Path]:
    folders = [Path(d) for d in dirs] or sorted(p.parent for p in Path("runs").glob(f"*/export/{CARD}"))
    if not folders:
        raise UserError("no export folders found under runs/: pass DIRS or run `digitpi export RUN_DIR` first")
    for folder in folders:
        if not (folder / CARD).is_file():
            raise UserError(f"{folder} is not an export folder (no {CARD}): run `digitpi export RUN_DIR`")
    return folders


def model_label(card: dict) -> str:
    """The model's name in the table; an ensemble of one model is "5 x best_cnn", not five names joined."""
    names = [member["model"] for member in card.get("members", [])]
    return f"{len(names)} x {names[0]}" if names and len(set(names)) == 1 else card["model"]


def run_epochs(card: dict) -> dict:
    """Epochs of the source runs, scheduled and run (an ensemble's when they agree), when the runs are still on
    disk: a 1-epoch reference should say so, and one stopped at its target say where."""
    runs = [run for run in source_runs(card) if (run / rundir.CONFIG).is_file() and (run / rundir.HISTORY).is_file()]
    epochs = {(rundir.load_config(run).epochs, rundir.epochs_run(run)) for run in runs}
    scheduled, run = epochs.pop() if len(epochs) == 1 else (None, None)
    return {"epochs": scheduled, "epochs_run": run}


def bench_folder(folder: Path, backends: list[str], images_path: str, calls: int, seconds: float) -> list[dict]:
    from digitpi.runtime import read_card

    card = read_card(folder)
    epochs = run_epochs(card)
    rows = []
    for backend in backends:
        if backend == "torch":
            checkpoints = [run / rundir.CHECKPOINT for run in source_runs(card)]
            on_disk = checkpoints and all(c.is_file() for c in checkpoints)
            if not on_disk or importlib.util.find_spec("torch") is None:
                continue  # torch is the PC-side reference: needs torch and the source runs
            size, accuracy_key = sum(c.stat().st_size for c in checkpoints), "torch"
        else:
            size, accuracy_key = (folder / VARIANT_OF[backend].file).stat().st_size, VARIANT_OF[backend].name
        row = {"model": model_label(card), **epochs, "folder": str(folder), "backend": backend,
               "test_accuracy": card["test_accuracy"].get(accuracy_key), "file_bytes": size}
        for threads in (1, 2):
            args = json.dumps([str(folder), backend, threads, images_path, calls, seconds])
            row |= json.loads(run_python(WORKER_SCRIPT, args, threads=threads))
        row["peak_rss_mb"] = int(run_python(RSS_SCRIPT, str(folder), backend, images_path)) / 1024
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("model", "backend", "size KB", "test acc", "b1 p50 ms", "b1 p99 ms", "b256 img/s 1t",
            "b256 img/s 2t", "peak RSS MB")
    lines = [head]
    for r in rows:
        stopped = f"{r['epochs_run']} of " if r["epochs_run"] != r["epochs"] else ""
        name = r["model"] + (f" ({stopped}{r['epochs']} ep)" if r["epochs"] else "")
        acc = f"{100 * r['test_accuracy']:.2f}%" if r["test_accuracy"] is not None else "-"
        lines.append((name, r["backend"], f"{r['file_bytes'] / 1024:.1f}", acc, f"{r['p50_ms']:.3f}",
                      f"{r['p99_ms']:.3f}", f"{r['images_per_s_1t']:,.0f}", f"{r['images_per_s_2t']:,.0f}",
                      f"{r['peak_rss_mb']:.0f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) + " |"
           for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    return "\n".join(out)


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(),
            "python": platform.python_version(), "load_avg_1min": os.getloadavg()[0]}


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from digitpi import data

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise UserError(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if args.calls < 1 or args.seconds <= 0:
        raise UserError("--calls must be at least 1 and --seconds positive")
    folders = export_dirs(args.dirs)
    images, _ = data.load_split("mnist", "test", args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        images_path = str(Path(tmp) / "digits.npy")
        np.save(images_path, images[:1000])  # real test digits, cycled through for batch-1 calls
        rows = [row for folder in folders for row in bench_folder(folder, backends, images_path, args.calls,
                                                                   args.seconds)]
    if args.json:
        print(json.dumps({"machine": machine(), "batch": BATCH, "rows": rows}, indent=2))
    else:
        print(format_table(rows))
        print(f"\nbatch-1 latency on 1 thread over {args.calls} calls; throughput: median of batch-{BATCH} calls; "
              f"peak RSS: a fresh process that loads and predicts one digit. {machine()}")
