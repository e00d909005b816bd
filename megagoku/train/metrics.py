"""Training metrics: one JSON object per logged step in metrics.jsonl, the same scalars in
TensorBoard, and a progress line with rate and ETA (`MetricsLogger`, also the VAE trainer's);
`TrainMetrics`, the Transformer trainer's component around it (the window since the last
logged step, MFU, when to log)."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from megagoku.progress import RateMeter, format_duration

# Dense bf16 peak per GPU in TFLOP/s (the vendors' datasheets), by name: the default MFU base.
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(tcfg, device: torch.device) -> float:
    """The per-device peak MFU is measured against: configured, else a known GPU under bf16."""
    if tcfg.peak_tflops > 0:
        return tcfg.peak_tflops
    if device.type == "cuda" and tcfg.precision in ("auto", "bf16"):
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), 0.0)
    return 0.0


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
        self.meter = RateMeter(total_steps - start_step)  # this process's steps: the ETA

    def log(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": step, **{k: float(f"{float(v):.6g}") for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        for key, value in scalars.items():
            self.tensorboard.add_scalar(key, value, step)

    def progress(self, step: int, loss: float, steps_per_s: float, tokens_per_s: float) -> None:
        """The rates of the last window (`steps_per_s`, `tokens_per_s`); elapsed time and ETA
        over this process's steps (everything included: data, saves, samples)."""
        elapsed = self.meter.elapsed()
        _, eta = self.meter.measure(step - self.start_step)
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


class TrainMetrics:
    """What the trainer logs: every applied step joins the window (`add`; a skipped one is
    counted by `skip`), and at each logged step (`due`) the window's means and rates with the
    trainer's own scalars go to metrics.jsonl, TensorBoard and the progress line (rank 0)."""

    def __init__(self, run_dir: Path, tcfg, device: torch.device, world: int, start_step: int,
                 rank0: bool):
        self.logger = MetricsLogger(run_dir, tcfg.steps, start_step=start_step) if rank0 \
            else None
        self.log_every, self.total_steps = tcfg.log_every, tcfg.steps
        self.world, self.peak = world, peak_tflops(tcfg, device)
        self.window = LogWindow()
        self.last_loss = float("nan")  # the mean loss of the last logged window

    def start(self) -> None:
        """The loop starts: rates count from now."""
        self.window = LogWindow()

    def add(self, loss: float, tokens: int, kinds: list[str], per_sample: list[float],
            data_seconds: float, flops: float) -> None:
        self.window.add(loss, tokens, kinds, per_sample, data_seconds, flops)

    def skip(self) -> None:
        self.window.skipped += 1

    def due(self, step: int, stopping: bool = False) -> bool:
        return step % self.log_every == 0 or step == self.total_steps or stopping

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """The window's scalars, then `scalars`, for this step; a new window starts."""
        scalars = {**self.window.scalars(self.world, self.peak), **scalars}
        if self.logger is not None:
            self.logger.log(step, scalars)
            self.logger.progress(step, scalars["loss"], scalars["steps_per_s"],
                                 scalars["tokens_per_s"])
        self.last_loss = scalars["loss"]
        self.window = LogWindow()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
