"""The run folder that `digitpi train --out DIR` writes, in one place: its file names, save, load, complete.

    DIR/config.json        the full `Config`: the run rebuilds its model from it
    DIR/model.safetensors  the weights (no pickle); the header names the model and its args too
    DIR/history.json       loss and accuracy per epoch, train and validation
    DIR/metrics.json       test metrics, parameters, training time, best epoch, data checksums
    DIR/loss.png ...       the plots `report.plot_run` draws, named in PLOTS

Everything but the weights is plain JSON and is read here without torch: `digitpi bench infer` runs
on a Raspberry Pi, where a run's config may be read but its weights never are. torch and safetensors
are imported by the two functions that write and read weights, and only there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from digitpi import UserError, data
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
    data.write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def is_complete(run_dir: Path) -> bool:
    """Whether `run_dir` holds a whole saved run: `compare` reuses such a run instead of training it again."""
    return all((run_dir / name).is_file() for name in COMPLETE)


def save_run(out_dir: Path, model: nn.Module, cfg: Config, history: dict, metrics: dict) -> None:
    """Checkpoint, config, history and metrics of a run; each file written atomically, the metrics last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / CHECKPOINT, model, cfg)
    write_json(out_dir / CONFIG, asdict(cfg))
    write_json(out_dir / HISTORY, history)
    write_json(out_dir / METRICS, metrics)


def load_config(run_dir: str | Path) -> Config:
    """The `Config` a run was trained with (keys this version does not know are ignored)."""
    raw = json.loads((Path(run_dir) / CONFIG).read_text())
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in raw.items() if k in known})


def load_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / METRICS).read_text())


# ---------------------------------------------------------------- weights (torch)


def save_checkpoint(path: Path, model: nn.Module, cfg: Config) -> None:
    """Weights in safetensors (no pickle); the header carries model name and args, as config.json does."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"model": cfg.model, "model_args": json.dumps(cfg.model_args)})
    tmp.replace(path)


def load_checkpoint(run_dir: str | Path) -> tuple[nn.Module, Config]:
    """Rebuild the model of a run folder from its config and weights, in eval mode.

    The weights' header must name the model config.json names: a config copied from another run
    is refused by name rather than by a mismatch deep in the state dict.
    """
    from safetensors import safe_open

    from digitpi.models import create_model

    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / CONFIG, run_dir / CHECKPOINT
    if not config_path.is_file() or not weights_path.is_file():
        raise UserError(f"{run_dir} is not a training run (needs {CONFIG} and {CHECKPOINT})")
    cfg = load_config(run_dir)
    model = create_model(cfg.model, **cfg.model_args)
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        if "model" in header and header["model"] != cfg.model:
            raise RuntimeError(f"its header names model {header['model']}")
        if "model_args" in header and json.loads(header["model_args"]) != cfg.model_args:
            raise RuntimeError(f"its header names model args {header['model_args']}")
        model.load_state_dict(state)
    except (RuntimeError, OSError, ValueError) as e:  # header errors, or weights of another architecture
        first_line = str(e).strip().splitlines()[0]
        raise UserError(f"{weights_path} does not fit model {cfg.model}: {first_line}") from None
    return model.eval(), cfg
