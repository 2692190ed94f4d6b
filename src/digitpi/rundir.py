"""The run folder that `digitpi train --out DIR` writes, in one place: its file names, save, load, complete.

    DIR/config.json        the full `Config`: the run rebuilds its model from it
    DIR/model.safetensors  the weights (no pickle); the header names the model and its args too, and
                           carries the SHA-256 of the tensor bytes, checked whenever the weights are read
    DIR/history.json       loss and accuracy per epoch: while learning, train and validation (train.HISTORY)
    DIR/metrics.json       test metrics, parameters, training time, best epoch, data checksums
    DIR/loss.png ...       the plots `report.plot_run` draws, named in PLOTS

Everything but the weights is plain JSON and is read here without torch: `digitpi bench infer` runs
on a Raspberry Pi, where a run's config may be read but its weights never are. torch and safetensors
are imported by the two functions that write and read weights, and only there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from digitpi import UserError, files, one_line
from digitpi.config import Config

if TYPE_CHECKING:
    from torch import nn

CONFIG = "config.json"
CHECKPOINT = "model.safetensors"
HISTORY = "history.json"
METRICS = "metrics.json"
PLOTS = {"loss": "loss.png", "accuracy": "accuracy.png", "confusion": "confusion.png",
         "misclassified": "misclassified.png"}
COMPLETE = (CONFIG, METRICS, CHECKPOINT)  # a run holding these was saved to the end (`save_run` writes them)


def write_json(path: Path, payload: dict) -> None:
    files.write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def is_complete(run_dir: Path) -> bool:
    """Whether `run_dir` holds a whole saved run: `compare` reuses such a run instead of training it again."""
    return all((run_dir / name).is_file() for name in COMPLETE)


def save_run(out_dir: Path, model: nn.Module, cfg: Config, history: dict, metrics: dict) -> None:
    """Checkpoint, config, history and metrics of a run; each file written atomically, the metrics last.
    A run saved there before loses its metrics first, so a save cut short leaves an incomplete run, never
    new weights beside the old run's test numbers; and its plots: `report.plot_run` draws this run's, if asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (METRICS, *PLOTS.values()):
        if (out_dir / name).is_file():
            (out_dir / name).unlink()
    save_checkpoint(out_dir / CHECKPOINT, model, cfg)
    write_json(out_dir / CONFIG, asdict(cfg))
    write_json(out_dir / HISTORY, history)
    write_json(out_dir / METRICS, metrics)


MAX_JSON_BYTES = 2**26  # a run's history of thousands of epochs is a few MB


def read_json(path: Path) -> dict:
    """A JSON object from a run folder, or one line saying why it cannot be one."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {path.stat().st_size:,} bytes, more than a run's {path.name} ever holds")
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {path.parent} is not a complete run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path}: unreadable ({one_line(e)})") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a JSON object, found a {type(payload).__name__}")
    return payload


def load_config(run_dir: str | Path) -> Config:
    """The `Config` a run was trained with (keys this version does not know are ignored)."""
    path = Path(run_dir) / CONFIG
    raw = read_json(path)
    known = {f.name for f in fields(Config)}
    try:
        return Config(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: not a valid run config ({e})") from None


def load_metrics(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / METRICS)


def epochs_run(run_dir: str | Path) -> int:
    """Epochs the run trained: fewer than its config's when `digitpi bench train` stopped it at its target."""
    path = Path(run_dir) / HISTORY
    per_epoch = read_json(path).get("loss")
    if not isinstance(per_epoch, list):
        raise UserError(f"{path}: no per-epoch 'loss' list")
    return len(per_epoch)


# ---------------------------------------------------------------- weights (torch)


DIGEST_KEY = "tensors_sha256"  # in the safetensors header: the SHA-256 of every byte after the header


def tensor_bytes(raw: bytes) -> tuple[dict, bytes]:
    """The header metadata and the tensor bytes of a safetensors file (8-byte length, JSON header, data)."""
    size = int.from_bytes(raw[:8], "little")
    if len(raw) < 8 or size > len(raw) - 8:
        raise ValueError("truncated header")
    header = json.loads(raw[8:8 + size])
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
        raise ValueError("header is not a JSON object of tensors")
    return header.get("__metadata__") or {}, raw[8 + size:]


def save_checkpoint(path: Path, model: nn.Module, cfg: Config) -> None:
    """Weights in safetensors (no pickle); the header carries model name and args, as config.json does,
    and the SHA-256 of the tensor bytes, so a flipped bit is found before the weights are used."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"model": cfg.model, "model_args": json.dumps(cfg.model_args)}
    _, tensors = tensor_bytes(save(state, metadata=metadata))  # the tensor bytes do not depend on the header
    metadata[DIGEST_KEY] = hashlib.sha256(tensors).hexdigest()
    files.write_atomic(path, save(state, metadata=metadata))


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(header metadata, tensors) of a checkpoint whose tensor bytes match the SHA-256 it carries.
    Checkpoints from before the checksum (no `tensors_sha256`) are read unchecked."""
    from safetensors.torch import load

    from digitpi.models import MAX_PARAMS

    try:
        if path.stat().st_size > 4 * MAX_PARAMS + 2**24:  # float32 weights of the largest model digitpi builds
            raise UserError(f"{path}: {path.stat().st_size / 1e9:.1f} GB, more than the weights of any model "
                            f"digitpi builds ({MAX_PARAMS:,} parameters): not read")
        raw = path.read_bytes()
        metadata, tensors = tensor_bytes(raw)
        state = load(raw)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UserError:
        raise
    except Exception as e:  # safetensors' SafetensorError (not a RuntimeError), JSON, a truncated file
        raise UserError(f"{path}: not a readable checkpoint, corrupt or truncated ({one_line(e, 100)})") from None
    if DIGEST_KEY in metadata and hashlib.sha256(tensors).hexdigest() != metadata[DIGEST_KEY]:
        raise UserError(f"{path}: the weights do not match their SHA-256 (corrupt, or changed after training)")
    return metadata, state


def load_checkpoint(run_dir: str | Path) -> tuple[nn.Module, Config]:
    """Rebuild the model of a run folder from its config and weights, in eval mode.

    The weights' header must name the model config.json names: a config copied from another run
    is refused by name rather than by a mismatch deep in the state dict.
    """
    from digitpi.models import check_model, create_model

    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / CONFIG, run_dir / CHECKPOINT
    if not config_path.is_file() or not weights_path.is_file():
        raise UserError(f"{run_dir} is not a training run (needs {CONFIG} and {CHECKPOINT})")
    cfg = load_config(run_dir)
    try:
        check_model(cfg.model, cfg.model_args)  # weightless: a hand-edited layout of 10**10 parameters is not built
        model = create_model(cfg.model, **cfg.model_args)
    except (TypeError, ValueError) as e:  # model_args the builder does not take
        raise UserError(f"{config_path}: cannot build model {cfg.model!r} ({one_line(e)})") from None
    except UserError as e:  # a model this version does not have, or one too large
        raise UserError(f"{config_path}: {e}") from None
    header, state = read_checkpoint(weights_path)
    try:
        if "model" in header and header["model"] != cfg.model:
            raise RuntimeError(f"its header names model {header['model']}")
        if "model_args" in header and json.loads(header["model_args"]) != cfg.model_args:
            raise RuntimeError(f"its header names model args {header['model_args']}")
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:  # header errors, or weights of another architecture
        raise UserError(f"{weights_path} does not fit model {cfg.model}: {one_line(e)}") from None
    return model.eval(), cfg
