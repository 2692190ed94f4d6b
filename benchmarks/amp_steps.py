"""Milliseconds a training step of our models takes in float32 and autocast to bf16 or fp16 (scaled), as the
training loop runs it (`train.train_step`): why `--amp auto` leaves mixed precision off on the CPU.

    python benchmarks/amp_steps.py [cpu|cuda]   (median of 10 steps after 2 warm-up, batch 128, random images)
"""

from __future__ import annotations

import sys
import time

import torch

from digitpi.bench import cpu_name
from digitpi.models import create_model
from digitpi.train import train_step


def step_ms(name: str, amp: str, device: torch.device) -> float:
    model = create_model(name).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    x = torch.rand(128, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)
    times = []
    for _ in range(12):
        start = time.perf_counter()
        train_step(model, opt, scaler, amp, x, y, label_smoothing=0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times[2:])[len(times[2:]) // 2]


def main() -> None:
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu_name()}, {torch.get_num_threads()} threads")
    print(f"# {where}, torch {torch.__version__}; ms a training step, batch 128 (x float32's time)")
    print("| model | float32 | bf16 | fp16 |\n| --- | ---: | ---: | ---: |")
    for name in ("fast_cnn", "mid_cnn", "best_cnn"):
        base = step_ms(name, "off", device)
        cells = [f"{ms:.1f} ({ms / base:.1f}x)" for ms in (step_ms(name, amp, device) for amp in ("bf16", "fp16"))]
        print(f"| {name} | {base:.1f} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
