"""Training metrics: one JSON object per logged step in metrics.jsonl, the same scalars in
TensorBoard, and a progress line with rate and ETA."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from megagoku.progress import format_duration


@dataclass
class LogWindow:
    """What happened since the last logged step; `scalars()` turns it into rates and means."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    loss_sum: float = 0.0
    tokens: int = 0
    samples: int = 0
    data_seconds: float = 0.0
    flops: float = 0.0  # training FLOPs of the steps (all replicas)
    skipped: int = 0  # steps whose update was not applied (anomalies, rollback skips)
    errors: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, loss: float, tokens: int, kinds: list[str], per_sample: list[float],
            data_seconds: float, flops: float = 0.0) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.tokens += tokens
        self.samples += len(kinds)
        self.data_seconds += data_seconds
        self.flops += flops
        for kind, err in zip(kinds, per_sample):
            self.errors[kind].append(err)

    def scalars(self, world: int = 1, peak_tflops: float = 0.0) -> dict[str, float]:
        """Means and rates; FLOP/s per device over `world` devices, and MFU against
        `peak_tflops` per device when it is known."""
        dt = time.perf_counter() - self.start
        out = {
            "loss": self.loss_sum / self.steps if self.steps else float("nan"),
            "steps_per_s": (self.steps + self.skipped) / dt,
            "tokens_per_s": self.tokens / dt,
            "samples_per_s": self.samples / dt,
            "data_wait_fraction": self.data_seconds / dt,
            "tflops_per_device": self.flops / dt / world / 1e12,
            "skipped_steps": self.skipped,
        }
        if peak_tflops > 0:
            out["mfu"] = out["tflops_per_device"] / peak_tflops
        for kind, errors in sorted(self.errors.items()):
            out[f"loss_{kind}"] = sum(errors) / len(errors)  # per modality: video, image
        return out


def truncate_after(jsonl: Path, step: int) -> None:
    """Drop the records of steps after `step` (logged after the checkpoint a run resumes from,
    and about to be logged again), and a torn last line."""
    if not jsonl.exists():
        return
    kept = []
    for line in jsonl.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    jsonl.write_text("".join(line + "\n" for line in kept))


class MetricsLogger:
    """metrics.jsonl and TensorBoard; a resumed run (`start_step` > 0) continues both from that
    step, as if the steps after it had never been logged."""

    def __init__(self, run_dir: Path, total_steps: int, stream=sys.stderr, start_step: int = 0):
        run_dir.mkdir(parents=True, exist_ok=True)
        if start_step:
            truncate_after(run_dir / "metrics.jsonl", start_step)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"),
                                         purge_step=start_step + 1 if start_step else None)
        self.start_step = start_step
        self.total_steps = total_steps
        self.stream = stream
        self.start = time.perf_counter()

    def log(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": step, **{k: float(f"{float(v):.6g}") for k, v in scalars.items()}}
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
