"""The `digitpi` command: thin wrappers that parse flags, call library functions and print.

Each command imports what it needs inside its function, and building the parser imports none of
it (no torch, numpy, Pillow or benchmark): `digitpi predict` and `digitpi serve` start quickly on
a Raspberry Pi that has only the core install.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from digitpi import UserError, __version__, files, one_line
from digitpi.bench import BENCHMARKS
from digitpi.exportdir import BACKENDS, PRECISIONS, is_export

DEFAULT_RUN_DIR = "runs"
ERROR_CHARS = 1000  # an error line quoting a value from a file is cut here
SAMPLES_DEFAULT = "default: $XDG_DATA_HOME/digitpi/samples.db, else ~/.local/share/digitpi/samples.db"
STDIN = "standard input"  # what messages call the image `-` reads
DESCRIPTION = "Train a handwritten-digit classifier on a PC; read digits with it on a Raspberry Pi."


def fail(message: str) -> None:
    raise UserError(message)


def read_stdin() -> bytes:
    """Standard input as a picture's bytes, refused past `preprocess.SETTINGS.max_file_bytes`:
    `cat /dev/zero | digitpi predict -` must not fill memory."""
    from digitpi import preprocess

    limit = preprocess.SETTINGS.max_file_bytes
    payload = sys.stdin.buffer.read(limit + 1)
    if len(payload) > limit:
        raise preprocess.ImageError(f"more than {limit // 2**20} MB, too large for a picture")
    return payload


def plain(text: str) -> str:
    """`text` as argparse help, which formats help with %: a literal percent sign must be doubled."""
    return text.replace("%", "%%")


def writable_dir(path: str | Path) -> Path:
    """Create `path` and prove it is writable now, before minutes of training are spent."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".digitpi-write-test-{os.getpid()}"  # one per process: torchrun starts several
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        fail(f"cannot write to output folder {path}: {e.strerror}")
    return path


# ---------------------------------------------------------------- data, summary


def cmd_data(args: argparse.Namespace) -> None:
    from digitpi import data

    if args.grid:
        from digitpi import report

        report.figure_format(Path(args.grid))  # a name without a picture extension fails before the data loads
    info = data.dataset_info(args.dataset)
    folder = data.locate(args.dataset, args.data_dir)
    status = data.verify_folder(folder, info)
    print(f"dataset: {args.dataset}\nfolder:  {folder}")
    for stem, state in status.items():
        print(f"  {stem:<26} sha256 {state}")
    for split in data.SPLIT_FILES:
        images, labels = data.load_split(args.dataset, split, args.data_dir)
        counts = [int((labels == c).sum()) for c in range(len(info.classes))]
        print(f"{split}: {len(images)} images {images.shape[1]}x{images.shape[2]}, per class: "
              + " ".join(f"{info.classes[c]}={n}" for c, n in enumerate(counts)))
    if args.grid:
        images, labels = data.load_split(args.dataset, "train", args.data_dir)
        report.save_image_grid(Path(args.grid), images[:12], [f"Class {info.classes[y]}" for y in labels[:12]])
        print(f"wrote {args.grid}")


def cmd_summary(args: argparse.Namespace) -> None:
    from digitpi import models

    models.check_model(args.model, args.model_args)
    model = models.create_model(args.model, **args.model_args)
    print(models.format_summary(model, args.model))


# ---------------------------------------------------------------- train, evaluate, compare


def config_help(cls: type | None = None, default_note: str = ", or the recipe's") -> dict[str, str]:
    """Flag help from the comments on a config dataclass's defaults (`Config` unless told): the
    defaults are documented once."""
    from digitpi.config import Config

    source = inspect.getsource(cls or Config)
    return {m[1]: plain(f"{m[3].strip()} (default: {m[2].strip().replace('field(default_factory=dict)', '{}')}"
                        f"{default_note})")
            for m in re.finditer(r"^\s+(\w+): [^=]+= (.+?)  # (.+)$", source, re.M)}


def json_object(text: str) -> dict:
    """A flag's value given as a JSON object, e.g. --model-args '{"stages": [[6, 6], [12, 12], [21]]}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("not JSON a builder takes (nested too deeply)") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def add_config_flags(parser: argparse.ArgumentParser, cls: type | None = None,
                     default_note: str = ", or the recipe's") -> None:
    """One flag per scalar field of a config dataclass (`Config` unless told); unset flags keep the default."""
    from digitpi.config import Config

    helps = config_help(cls, default_note)
    for f in dataclasses.fields(cls or Config):
        kind = {"int": int, "float": float, "str": str, "bool": bool,
                "dict": json_object}.get(str(f.type).removesuffix(" | None"))
        if kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helps.get(f.name))
        else:
            parser.add_argument(flag, type=kind, default=None, help=helps.get(f.name))


def cmd_train(args: argparse.Namespace) -> None:
    from digitpi import config, distributed, pipeline, rundir, train

    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(config.Config)}
    try:
        cfg = config.recipe_config(args.recipe, **overrides)
    except (ValueError, TypeError) as e:
        fail(str(e))
    from digitpi.models import check_model

    check_model(cfg.model, cfg.model_args)  # an unknown model or unfit --model-args fail before any data is read
    train.pick_device(cfg.device)  # and so does --device cuda where there is no GPU
    folder = args.out or Path(DEFAULT_RUN_DIR) / cfg.model
    if distributed.launched() and os.environ["RANK"] != "0":  # torchrun: rank 0 measures and saves the one run folder
        train.train(cfg, progress=not args.quiet)
        distributed.leave()
    with files.writing(folder) as out:  # one run at a time per folder
        writable_dir(out)
        replacing = rundir.is_complete(out)
        result = train.train(cfg, progress=not args.quiet)
        metrics = pipeline.finish_run(result, out)
    print(f"saved run to {out}" + (", in place of the run that was there" if replacing else ""))
    if is_export(out / "export"):
        print(f"{out / 'export'} holds an export of the weights this run replaced: `digitpi export {out}` again",
              file=sys.stderr)
    print(f"The final loss on test data is {metrics['test_loss']:.4f}")
    print(f"The accuracy on test data is {100 * metrics['test_accuracy']:.2f}%")
    if distributed.launched():
        distributed.leave()


def cmd_evaluate(args: argparse.Namespace) -> None:
    from digitpi import evaluate

    split = "validation" if args.validation else "test"
    result = evaluate.evaluate_dirs([Path(d) for d in args.run_dirs], args.data_dir, args.tta, split)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(evaluate.format_evaluation(result))


def cmd_compare(args: argparse.Namespace) -> None:
    from digitpi import compare

    with files.writing(args.out) as out:
        writable_dir(out)
        path = compare.compare(args.models, out, epochs=args.epochs, retrain=args.retrain,
                               data_dir=args.data_dir, progress=not args.quiet, log=print)
    print(path.read_text())
    print(f"wrote {path}")


def cmd_export(args: argparse.Namespace) -> None:
    from digitpi import export

    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            fail(f"no run folder {run_dir} (train one with `digitpi train --out {run_dir}`)")
    if len(run_dirs) > 1 and not args.out:
        fail("several runs are exported as one ensemble: say where with --out DIR")
    out = Path(args.out) if args.out else run_dirs[0] / "export"
    with files.writing(out):  # a failure (a corrupt checkpoint) removes the folder if this made it
        card = export.export_runs(run_dirs, out, args.data_dir, log=lambda line: print("  " + line))
    print(export.format_card(card, out))


def cmd_serve(args: argparse.Namespace) -> None:
    from digitpi import serve

    hosts = tuple(h.strip() for h in (args.allowed_hosts or "").split(",") if h.strip())
    serve.serve(serve.ServeConfig(model_dir=args.model, host=args.host, port=args.port, precision=args.precision,
                                  backend=args.backend, allowed_hosts=hosts, collect=args.collect,
                                  samples=args.samples), log_level=args.log_level)


# ---------------------------------------------------------------- samples, finetune


def cmd_samples(args: argparse.Namespace) -> int:
    from digitpi import samples

    path = Path(args.samples) if args.samples else samples.default_path()
    if args.action == "list" and args.last is not None and args.last < 1:
        fail(f"--last must be at least 1, got {args.last}")
    writes = args.action in ("import", "delete")  # the others only read: a database another user owns will do
    new_database = samples.removed_if_left_empty(path) if args.action == "import" else contextlib.nullcontext()
    with new_database, samples.SampleStore(path, create=args.action == "import", writable=writes) as store:
        if args.action == "stats":
            stats = store.stats()
            print(json.dumps(stats, indent=2) if args.json else samples.format_stats(stats, path))
        elif args.action == "list":
            rows = store.listing(label=args.label, last=args.last)
            print(json.dumps(rows, indent=2) if args.json else samples.format_listing(rows))
        elif args.action == "export":
            with files.writing(args.dir) as out:  # cut short, it leaves no folder it made
                writable_dir(out)
                if args.sqlite:
                    store.backup(out / samples.FILE_NAME)
                    print(f"copied {store.count():,} samples to {out / samples.FILE_NAME}")
                else:
                    print(f"exported {samples.export_folder(store, out):,} samples to {out}")
        elif args.action == "import":
            skipped: list[str] = []
            added, present = samples.import_into(store, args.source, skipped=skipped)
            for message in skipped:  # each picture that holds no digit: one line, and the others are imported
                print(f"digitpi: error: {message}", file=sys.stderr)
            if not added and not present:  # nothing came: a database made for it goes (`removed_if_left_empty`)
                fail(f"no sample to import: none of the {len(skipped):,} pictures in {args.source} holds a digit"
                     if skipped else f"no sample to import: {args.source} holds none")
            print(f"imported {added:,} samples into {path}" + (f" ({present:,} were there already)" if present else "")
                  + (f"; skipped {len(skipped):,} pictures" if skipped else ""))
            return 2 if skipped else 0
        else:  # delete
            if not (args.ids or args.label is not None or args.all):
                fail("say which samples to delete: --id N..., --label D or --all")
            print(f"deleted {store.delete(args.ids, args.label):,} samples from {path}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from digitpi import finetune, rundir
    from digitpi.config import FinetuneConfig

    run_dir = Path(args.run_dir)
    named = run_dir if run_dir.name not in ("", "..") else run_dir.resolve()  # ".", "..": the folder's own name
    if not args.out and not named.name:
        fail(f"{run_dir} has no name to give the new run: say where with --out DIR")
    out = Path(args.out) if args.out else named.with_name(named.name + "-finetuned")
    if out.resolve() == run_dir.resolve():
        fail(f"--out {out} is the run being fine-tuned: choose another folder")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)
                 if getattr(args, f.name, None) is not None}
    try:
        cfg = FinetuneConfig(**overrides)
    except ValueError as e:
        fail(str(e))
    skipped: list[str] = []
    with files.writing(out):  # one run at a time per folder; a failure leaves no folder it made
        replacing = rundir.is_complete(out)
        report = finetune.finetune_run(run_dir, Path(args.samples), writable_dir(out), cfg, args.data_dir,
                                       progress=not args.quiet, skipped=skipped)
    for message in skipped:  # each picture that could not be read: one line, and the others were learned
        print(f"digitpi: error: {message}", file=sys.stderr)
    print(finetune.format_report(report))
    print(f"saved run to {out}" + (", in place of the run that was there" if replacing else "")
          + f"; `digitpi export {out}` takes it to the Pi"
          + (f"; skipped {len(skipped):,} pictures" if skipped else ""))
    return 2 if skipped else 0


def cmd_service(args: argparse.Namespace) -> None:
    from digitpi import service

    service.run(args)


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer every picture, in order: a reading, or a one-line error (and carry on). Exit 2 if any failed."""
    import io

    import numpy as np
    from PIL import Image

    from digitpi import preprocess, reading, runtime

    if args.top < 1:
        fail(f"--top must be at least 1, got {args.top}")
    if args.images.count("-") > 1:
        fail(f"{STDIN} (-) can be read only once")
    if args.save_input:
        files.check_replaceable(Path(args.save_input))  # a FIFO or a device there: refused before any work
        if any(same_file(image, args.save_input) for image in args.images):
            fail(f"--save-input {args.save_input} is one of the pictures to read: it is not replaced")
    classifier = runtime.Classifier.load(args.model, precision=args.precision)
    top = min(args.top, len(classifier.classes))
    records, seen, failed = [], [], 0
    for image in args.images:
        try:  # name "": messages without the picture's name, which is printed (or recorded) beside them
            source = read_stdin() if image == "-" else image
            page = reading.read(classifier, source, page=args.multi, name="")
        except preprocess.ImageError as e:
            failed += 1
            records.append({"image": image, "error": str(e)})
            if not args.json:
                sys.stdout.flush()
                print(f"digitpi: error: {STDIN if image == '-' else image}: {e}", file=sys.stderr, flush=True)
            continue
        seen += [digit.image for digit in page.digits]
        records.append(page_record(image, page, top) if args.multi else {"image": image, **digit_record(
            page.digits[0], top)})
        if not args.json:
            print(format_reading(image, page, top, args.multi), flush=True)
    if args.save_input and seen:  # the 28x28 images the model saw, side by side, written atomically
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate(seen, axis=1), "L").save(buffer, format="PNG")
        files.write_atomic(args.save_input, buffer.getvalue())
    if args.json:
        print(json.dumps(records, indent=2))
    return 2 if failed else 0


def same_file(image: str, target: str) -> bool:
    """Whether writing `target` would replace the picture `image` (`-`: what standard input reads),
    by whatever name: a link, or `missing/..` that writing would create."""
    try:
        there = os.stat(os.path.realpath(target))
        here = os.fstat(sys.stdin.fileno()) if image == "-" else os.stat(image)
    except (OSError, ValueError):  # nothing there yet, or no such picture: nothing to replace
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def cmd_watch(args: argparse.Namespace) -> int:
    """Print each change of what the camera or video shows; Ctrl-C, the video's end or a closed pipe exit 0."""
    from digitpi import runtime, watch

    for flag, value in (("--every", args.every), ("--steady", args.steady)):
        if value < 1:
            fail(f"{flag} must be at least 1, got {value}")
    # OpenCV and the source are checked before the model loads: a missing camera says so at once
    capture = watch.open_video(args.video) if args.video is not None else watch.open_camera(args.camera)
    try:
        classifier = runtime.Classifier.load(args.model, precision=args.precision)
        frames = (watch.video_frames(capture, args.every) if args.video is not None
                  else watch.camera_frames(capture, args.every))
        for sight in watch.changes(classifier, frames, args.steady):
            print(json.dumps(watch.record(sight)) if args.json else watch.describe(sight), flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the program reading the lines has gone (`| head -1`): stop quietly too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's flush at exit fails again
    finally:
        capture.release()
    return 0


def digit_record(digit, top: int) -> dict:
    """A digit as `predict --json` prints it: digit, probability, the top classes, and its box if it has one."""
    def named(label: str) -> int | str:  # digits as numbers, as they always were; other classes by name
        return int(label) if label.isdigit() else label

    record = {"digit": named(digit.label), "probability": round(digit.probability, 6),
              "top": [{"digit": named(label), "probability": round(p, 6)} for label, p in digit.top(top)]}
    return record | ({"box": list(digit.box)} if digit.box is not None else {})


def page_record(image: str, page, top: int) -> dict:
    """A page as `predict --multi --json` prints it: its text, then lines of digits with their boxes."""
    from digitpi.reading import line_probability, line_text

    return {"image": image, "text": page.text, "probability": round(line_probability(page.digits), 6),
            "lines": [{"text": line_text(line), "probability": round(line_probability(line), 6),
                       "digits": [digit_record(digit, top) for digit in line]} for line in page.lines]}


def format_reading(image: str, page, top: int, multi: bool) -> str:
    """Text output: `photo.png: 7 (98.1 %)  top 3: ...`, or with --multi one output line per written line."""
    from digitpi.reading import line_probability, line_text

    name = STDIN if image == "-" else image

    def percent(p: float) -> str:
        return f"{100 * p:.1f} %"

    if not multi:
        digit = page.digits[0]
        others = ", ".join(f"{i} {percent(p)}" for i, p in digit.top(top))
        return f"{name}: {digit.label} ({percent(digit.probability)})" + (f"  top {top}: {others}" if top > 1 else "")
    return "\n".join(f"{name}: {line_text(line)} ({percent(line_probability(line))})  per digit: "
                     + ", ".join(f"{d.label} {percent(d.probability)}" for d in line) for line in page.lines)


def cmd_import_keras(args: argparse.Namespace) -> None:
    from digitpi import export, keras_import

    h5 = Path(args.model)
    out = Path(args.out) if args.out else keras_import.default_out_dir(h5)
    with files.writing(out):  # an unsupported layer fails before any file is written, and leaves no folder
        imported, card = keras_import.import_to_folder(h5, out, args.data_dir, log=lambda line: print("  " + line))
    match = f" (same network as digitpi's {imported.zoo_name})" if imported.zoo_name else ""
    print(f"read {h5}: Keras {card['source'].get('keras_version', '?')} Sequential "
          f"{imported.name!r}, input {imported.input_shape}{match}")
    print(f"input assumed: {card['source']['input']}")
    print(export.format_card(card, out))
    if warning := keras_import.accuracy_warning(card):
        print(f"digitpi: warning: {warning}", file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> None:
    importlib.import_module(f"digitpi.bench.{args.benchmark}").run(args)


# ---------------------------------------------------------------- the parser


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every command and its flags. A benchmark's own flags are declared by its module, which is
    imported only when `argv` chooses that benchmark (`bench NAME ...`)."""
    parser = argparse.ArgumentParser(prog="digitpi", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"digitpi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="where the data is, counts, checksums; --grid writes sample images")
    p.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist (default: mnist)")
    p.add_argument("--data-dir", help="folder holding the four IDX files")
    p.add_argument("--grid", metavar="FILE.png", help="write a 3x4 grid of training images")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("summary", help="layers, output shapes and parameter counts of a model")
    p.add_argument("model", help="a model name (see `digitpi train --help`)")
    p.add_argument("--model-args", type=json_object, default={}, metavar="JSON",
                   help="keyword arguments of the model's builder, as for `digitpi train`")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a model, evaluate it on the test set, save run and plots")
    p.add_argument("--recipe", help="named hyperparameter preset (default: the model's own)")
    p.add_argument("--out", help=f"run folder (default: {DEFAULT_RUN_DIR}/MODEL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test (or validation) loss, accuracy, per-class accuracy, confusion")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder; several are evaluated as an ensemble")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over 1-pixel shifts")
    p.add_argument("--validation", action="store_true",
                   help="measure on the training images the runs held out (--val-split; one --val-seed for several), "
                        "not the test set: where an ensemble's members are chosen")
    p.add_argument("--data-dir", help="folder holding the four IDX files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="train (or reuse) several models and write report.md")
    p.add_argument("models", nargs="+", help="model names")
    p.add_argument("--out", default=f"{DEFAULT_RUN_DIR}/compare", help="report folder")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (quick comparisons)")
    p.add_argument("--retrain", action="store_true",
                   help="train even when a run exists (a run is reused only if trained with the same settings)")
    p.add_argument("--data-dir", help="folder holding the four IDX files")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no per-epoch lines")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="ONNX fp32 + int8, NumPy weights and a model card for the Raspberry Pi")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="a training run folder (`digitpi train --out RUN_DIR`); several are exported as one "
                        "ensemble that averages their probabilities")
    p.add_argument("--out", metavar="DIR", help="export folder (default: RUN_DIR/export; required for an ensemble)")
    p.add_argument("--data-dir", help="folder holding the four IDX files (int8 calibration, test accuracy)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="a drawing page and an HTTP API (POST /predict) for an exported model")
    p.add_argument("--model", required=True, metavar="DIR", help="an exported model folder (`digitpi export`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for the local network "
                                                         "(default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--precision", choices=PRECISIONS, help="which exported model to run (default: the runtime's)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what runs the model (default: auto, onnxruntime when installed)")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated Host names the server answers besides localhost, e.g. digits.example.org "
                        "or *.example.org; * for any (default: localhost, plus this machine's name off loopback)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default: info; requests are not logged)")
    p.add_argument("--collect", action="store_true",
                   help="keep the digits users label on the page (POST /samples) for `digitpi finetune` (default: off)")
    p.add_argument("--samples", metavar="PATH", help=f"the samples database --collect writes ({SAMPLES_DEFAULT})")
    p.set_defaults(func=cmd_serve, own_signals=True)  # uvicorn shuts down gracefully on SIGTERM and Ctrl-C

    from digitpi import service  # the standard library only: cheap enough to build its flags every time

    p = sub.add_parser("service", help="a systemd unit that starts `digitpi serve` at boot (print it, or --out FILE)")
    service.add_arguments(p)
    p.set_defaults(func=cmd_service)

    p = sub.add_parser("samples", help="the digits collected by `serve --collect`: list, stats, export, import, delete")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="one line per sample (no pictures)")
    a.add_argument("--label", type=int, choices=range(10), metavar="D", help="only samples of this digit")
    a.add_argument("--last", type=int, metavar="N", help="only the N newest")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser("stats", help="samples per digit, and how often the model read them right")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser("export", help="write DIR/samples.csv with PNG files (or, with --sqlite, DIR/samples.db)")
    a.add_argument("dir", metavar="DIR", help="a folder; it must not hold an export already")
    a.add_argument("--sqlite", action="store_true", help="a consistent copy of the database file instead")
    a = actions.add_parser("import", help="add the samples of an export folder, a samples.db, or folders 0-9 "
                                          "of pictures")
    a.add_argument("source", metavar="DIR_OR_DB", help="what `samples export` wrote, a samples database, or a "
                                                        "folder holding 0/ ... 9/ of pictures")
    a = actions.add_parser("delete", help="delete samples")
    a.add_argument("--id", dest="ids", type=int, nargs="+", metavar="N", help="these samples")
    a.add_argument("--label", type=int, choices=range(10), metavar="D", help="every sample of this digit")
    a.add_argument("--all", action="store_true", help="every sample")
    for a in actions.choices.values():
        a.add_argument("--samples", metavar="PATH", help=f"the samples database ({SAMPLES_DEFAULT})")
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("finetune", help="teach a trained run your handwriting: your samples mixed with MNIST")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (`digitpi train --out RUN_DIR`)")
    p.add_argument("--samples", required=True, metavar="DB_OR_DIR",
                   help="a samples database, `samples export` folder, or folders 0/ ... 9/ of pictures")
    p.add_argument("--out", metavar="DIR", help="the new run folder (default: RUN_DIR-finetuned)")
    p.add_argument("--data-dir", metavar="DIR", help="the MNIST folder (default: the run's, else as `train` finds it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    from digitpi.config import FinetuneConfig

    add_config_flags(p, FinetuneConfig, default_note="")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("predict", help="read the digit in each image (photo, scan, drawing) with an exported model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...); - reads standard input")
    p.add_argument("--model", required=True, metavar="DIR", help="an exported model folder (`digitpi export`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--top", type=int, default=3, help="how many most likely digits to list (default: 3)")
    p.add_argument("--save-input", metavar="FILE.png",
                   help="write the 28x28 image(s) the model saw, side by side, to this PNG")
    p.add_argument("--multi", action="store_true",
                   help="each image holds several digits (a row, a page): read them line by line, with their boxes")
    p.add_argument("--precision", choices=PRECISIONS, help="which exported model to run (default: the runtime's)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("watch", help="read the digits a camera or a video sees: a line each time they change")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--camera", type=int, metavar="INDEX",
                        help="a camera: 0 is /dev/video0 (a USB webcam; the Pi camera through libcamerify)")
    source.add_argument("--video", metavar="FILE", help="a video file (MP4, AVI, MKV...: what OpenCV reads)")
    p.add_argument("--model", required=True, metavar="DIR", help="an exported model folder (`digitpi export`)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="read one frame in N (default: 1, every frame)")
    p.add_argument("--steady", type=int, default=3, metavar="FRAMES",
                   help="frames in a row that must read the same before it is printed (default: 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per line: frame, seconds, text, lines, boxes")
    p.add_argument("--precision", choices=PRECISIONS, help="which exported model to run (default: the runtime's)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("import-keras", help="convert a Keras .h5 (the course's model.save) into an export folder")
    p.add_argument("model", metavar="MODEL.h5", help="a Sequential Keras model saved as legacy HDF5 (.h5)")
    p.add_argument("--out", help="export folder (default: MODEL-export beside the .h5)")
    p.add_argument("--data-dir", help="folder holding the four IDX files (int8 calibration, test accuracy)")
    p.set_defaults(func=cmd_import_keras)

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS))
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, description in BENCHMARKS.items():
        b = bench.add_parser(name, help=plain(description), description=description)
        b.add_argument("--json", action="store_true", help="print results as JSON")
        if list(argv[:2]) == ["bench", name]:
            importlib.import_module(f"digitpi.bench.{name}").add_arguments(b)
        b.set_defaults(func=cmd_bench)
    return parser


class Stopped(BaseException):
    """SIGTERM (`kill`, `timeout`, systemd) or SIGHUP (a closed terminal or SSH session), raised where
    the command is: it unwinds as Ctrl-C does, so a folder this command made and its temporary files
    (a half-written file, int8 calibration) are removed instead of left behind."""


def stop(signum: int, frame) -> None:
    raise Stopped(signum)


STOP_SIGNALS = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    before = {}  # signals left at their default (`nohup` ignores SIGHUP: so do we); only the main thread sets them
    if threading.current_thread() is threading.main_thread() and not getattr(args, "own_signals", False):
        before = {number: signal.signal(number, stop) for number in STOP_SIGNALS
                  if signal.getsignal(number) is signal.SIG_DFL}
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return code
    except BrokenPipeError:  # `digitpi predict ... | head`: the reader has all it wanted; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        return 0  # as `watch` ends: the reader stopped reading, nothing failed
    except UserError as e:  # one line, even where a message quotes a value with a newline from a file
        print(f"digitpi: error: {one_line(e, ERROR_CHARS)}", file=sys.stderr)
        return 2
    except OSError as e:
        if os.environ.get("DIGITPI_DEBUG"):
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"digitpi: error: {one_line(f'{e.strerror or e}{where}', ERROR_CHARS)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: whatever was being written is left as it was
        print("digitpi: interrupted", file=sys.stderr)
        return 130
    except Stopped as e:
        number = e.args[0]
        print(f"digitpi: stopped by {signal.Signals(number).name}", file=sys.stderr)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)  # end by the signal, as its sender expects (systemd counts that a clean stop)
        return 128 + number
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
