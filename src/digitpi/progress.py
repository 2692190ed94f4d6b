"""Training progress, drawn the way its output can show it: a tqdm bar per epoch in a terminal or in Jupyter
(with ipywidgets), one plain line per epoch where a bar would be a carriage-return mess (a log file, a pipe,
a notebook run by nbclient or without ipywidgets). Both give the ETA and the running loss and accuracy.

Only what it is told is shown: `train` computes the numbers, this module formats them.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import TextIO

from tqdm import TqdmWarning

with warnings.catch_warnings():  # Jupyter without ipywidgets: tqdm warns, and we print lines instead of a bar
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

POSTFIX_SECONDS = 0.5  # the running loss and accuracy are refreshed at most this often (each costs a device sync)


def in_jupyter_with_widgets() -> bool:
    """Whether tqdm.auto chose its ipywidgets bar: a kernel that draws widgets, ipywidgets installed."""
    from tqdm.notebook import tqdm as notebook_tqdm

    return issubclass(tqdm, notebook_tqdm)


def format_metrics(metrics: dict[str, float]) -> str:
    """Keras's way: `loss: 0.1234 - accuracy: 0.9876`."""
    return " - ".join(f"{name}: {value:.4f}" for name, value in metrics.items())


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}" if minutes else f"{seconds} s"


class Progress:
    """The progress of one training run of `epochs` epochs of `steps` steps each.

    Once an epoch ends, both modes print its line, `Epoch 3/8 - 422 steps in 4.1 s - ETA 0:21 - loss: ...`
    (the ETA of the whole run; after the last epoch, its total time). `bar` also shows a tqdm bar while the
    epoch runs (the epoch's ETA, running loss and accuracy), which that line replaces: a line may wrap, a bar
    redrawn with `\r` must not. `None`: quiet.
    """

    def __init__(self, epochs: int, steps: int, enabled: bool = True, out: TextIO | None = None) -> None:
        self.epochs, self.steps = epochs, steps
        self.out = out or sys.stdout
        live = in_jupyter_with_widgets() or self.out.isatty()
        self.mode = None if not enabled else "bar" if live else "lines"
        self.bar = None
        self.started = time.perf_counter()
        self.epoch = 0
        self.epoch_started = self.started
        self.postfix_at = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.epoch_started = epoch, time.perf_counter()
        if self.mode == "bar":
            self.bar = tqdm(total=self.steps, desc=f"Epoch {epoch}/{self.epochs}", unit="step", file=self.out,
                            leave=False, dynamic_ncols=True)

    def step(self, running: Callable[[], dict[str, float]]) -> None:
        """One step done; `running()` gives the epoch's running metrics, asked only when they are shown."""
        if self.bar is None:
            return
        self.bar.update()
        now = time.perf_counter()
        if now - self.postfix_at >= POSTFIX_SECONDS:
            self.postfix_at = now
            self.bar.set_postfix_str(format_metrics(running()))  # and redraws: the first step shows an ETA

    def end_epoch(self, metrics: dict[str, float]) -> None:
        """The epoch's line, with its final metrics, in place of its bar."""
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode is not None:
            elapsed = now - self.started
            eta = elapsed / self.epoch * (self.epochs - self.epoch)
            when = f"ETA {format_seconds(eta)}" if self.epoch < self.epochs else f"total {format_seconds(elapsed)}"
            print(f"Epoch {self.epoch}/{self.epochs} - {self.steps} steps in {now - self.epoch_started:.1f} s - "
                  f"{when} - {format_metrics(metrics)}", file=self.out, flush=True)
