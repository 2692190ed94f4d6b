"""Training progress where people read it: a terminal (a real pseudo-terminal), a log file, and --quiet.

Each test trains fast_cnn for real, on a slice of the real training images, and reads what was printed.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import sys
import termios
import threading

import pytest
import torch

from digitpi import config, data, train

EPOCH_LINE = re.compile(r"^Epoch (\d)/2 - 16 steps in \d+\.\d s - (ETA|total) [\d:]+( s)? - loss: \d\.\d{4} - "
                        r"accuracy: \d\.\d{4} - train_loss: \d\.\d{4} - train_accuracy: \d\.\d{4} - "
                        r"val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}$")


@pytest.fixture(scope="module")
def tensors(mnist_dir):
    x, y = data.load_split("mnist", "train", mnist_dir)
    return torch.from_numpy(x[:2560].copy()), torch.from_numpy(y[:2560])  # 16 steps of 128 after a 20 % split


def train_briefly(tensors, progress: bool = True) -> train.TrainResult:
    cfg = config.recipe_config("fast", epochs=2, val_split=0.2)
    return train.train(cfg, progress=progress, train_images=tensors[0], train_labels=tensors[1])


def test_a_log_file_gets_one_plain_line_per_epoch(tensors, tmp_path, monkeypatch) -> None:
    log = tmp_path / "train.log"
    with log.open("w") as out:
        monkeypatch.setattr(sys, "stdout", out)
        result = train_briefly(tensors)
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no bar redrawn over itself, no terminal codes
    lines = text.splitlines()
    assert [EPOCH_LINE.match(line)[1] for line in lines] == ["1", "2"], text
    assert "ETA" in lines[0] and "total" in lines[1]
    assert f"val_accuracy: {result.history['val_accuracy'][-1]:.4f}" in lines[1]  # the numbers history holds


def test_a_terminal_gets_a_live_bar_with_eta_and_running_metrics(tensors, monkeypatch) -> None:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    chunks: list[bytes] = []

    def drain() -> None:  # the terminal's side: what a person would see, read as it is written
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with open(child, "w", closefd=False) as terminal:
        monkeypatch.setattr(sys, "stdout", terminal)
        train_briefly(tensors)
        terminal.flush()
    os.close(child)
    reader.join(timeout=10)
    os.close(main)
    screen = b"".join(chunks).decode()
    assert "\r" in screen  # the bar is redrawn in place while the epoch runs
    bars = [part for part in re.split(r"[\r\n]", screen) if part.startswith("Epoch 1/2:")]
    assert bars, screen
    assert any(re.search(r"\d+/16 \[\d\d:\d\d<\d\d:\d\d", bar) for bar in bars)  # steps done, elapsed<ETA
    assert any(re.search(r"loss: \d\.\d{4} - accuracy: \d\.\d{4}", bar) for bar in bars)  # running metrics
    finished = [line.strip("\r").split("\r")[-1] for line in screen.split("\n")]
    assert [m[1] for m in map(EPOCH_LINE.search, finished) if m] == ["1", "2"]  # each bar gives way to its line


def test_quiet_prints_nothing(tensors, capsys) -> None:
    train_briefly(tensors, progress=False)
    assert capsys.readouterr() == ("", "")
