"""Training metrics: one JSON object per logged step in metrics.jsonl, the same scalars in
TensorBoard, and a progress line with rate and ETA."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, stream=sys.stderr):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        self.total_steps = total_steps
        self.stream = stream
        self.start = time.perf_counter()

    def log(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": step, **{k: round(float(v), 6) for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        for key, value in scalars.items():
            self.tensorboard.add_scalar(key, value, step)

    def progress(self, step: int, loss: float, steps_per_s: float, tokens_per_s: float) -> None:
        elapsed = time.perf_counter() - self.start
        eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
        width = 24
        done = int(width * step / self.total_steps)
        bar = "#" * done + "." * (width - done)
        print(f"[{bar}] step {step}/{self.total_steps} loss {loss:.4f} "
              f"{steps_per_s:.2f} step/s {tokens_per_s / 1000:.1f}k tok/s "
              f"elapsed {format_duration(elapsed)} ETA {format_duration(eta)}",
              file=self.stream, flush=True)

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()
