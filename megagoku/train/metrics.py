"""Training metrics: one JSON object per logged step in metrics.jsonl, the same scalars in
TensorBoard, and a progress line with rate and ETA (`MetricsLogger`, also the VAE trainer's);
`TrainMetrics`, the Transformer trainer's component around it (the window since the last
logged step, MFU, when to log)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.tensorboard import SummaryWriter

from megagoku.progress import RateMeter, format_duration
from megagoku.train.run_writes import RunWrites, is_disk_error

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


def quiet_tensorboard_disk_errors() -> None:
    """TensorBoard writes from its own thread, which re-raises a write error after storing it:
    Python would print that thread's traceback, though the error is reported (one warning
    line) where MetricsLogger next writes. Such errors, and only those, are not printed."""
    previous = threading.excepthook
    if getattr(previous, "megagoku_quiet", False):
        return

    def hook(args) -> None:
        if is_disk_error(args.exc_value) and \
                type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.megagoku_quiet = True
    threading.excepthook = hook


class MetricsLogger:
    """metrics.jsonl and TensorBoard; a resumed run (`start_step` > 0) continues both from that
    step, as if the steps after it had never been logged. Every write goes through `writes`
    (`train/run_writes.py`): a full disk loses the lines of that write, with a warning, and the
    next write tries again (a torn metrics line is cut back; TensorBoard, whose writer thread
    dies with the error, starts a new events file)."""

    def __init__(self, run_dir: Path, total_steps: int, stream=sys.stderr, start_step: int = 0,
                 writes: Optional[RunWrites] = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        if start_step:
            truncate_after(run_dir / "metrics.jsonl", start_step)
        self.run_dir = run_dir
        self.writes = writes if writes is not None else RunWrites()
        self._jsonl = None
        self._tensorboard: Optional[SummaryWriter] = None
        # A resumed run hides the events logged after its checkpoint (first events file only).
        self._purge_step = start_step + 1 if start_step else None
        self.start_step = start_step
        self.total_steps = total_steps
        self.stream = stream
        self.meter = RateMeter(total_steps - start_step)  # this process's steps: the ETA
        quiet_tensorboard_disk_errors()
        self.writes.attempt("tensorboard", self.tensorboard_writer)  # the events file, at once

    def tensorboard_writer(self) -> SummaryWriter:
        if self._tensorboard is None:
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"),
                                              purge_step=self._purge_step)
            self._purge_step = None
        return self._tensorboard

    def _write_jsonl(self, line: str) -> None:
        if self._jsonl is None:
            self._jsonl = open(self.run_dir / "metrics.jsonl", "ab", buffering=0)
        end = self._jsonl.seek(0, 2)
        try:
            self._jsonl.write(line.encode())
        except OSError:
            try:  # no torn line: readers parse every line
                self._jsonl.truncate(end)
            except OSError:
                pass
            raise

    def _write_tensorboard(self, add: Callable[[SummaryWriter], None]) -> None:
        """`add` to the events file and flush, so that a failure shows here, not later in the
        writer's thread; a failed writer is dropped and the next write opens a new file."""
        writer = self.tensorboard_writer()
        try:
            add(writer)
            writer.flush()
        except OSError:
            self._tensorboard = None
            try:
                writer.close()
            except OSError:
                pass
            raise

    def log(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": step, **{k: float(f"{float(v):.6g}") for k, v in scalars.items()}}
        self.writes.attempt("metrics.jsonl", lambda: self._write_jsonl(json.dumps(record) + "\n"))

        def add(writer: SummaryWriter) -> None:
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)

        self.writes.attempt("tensorboard", lambda: self._write_tensorboard(add))

    def add_image(self, tag: str, image, step: int) -> None:
        """An (H, W, 3) image to TensorBoard."""
        self.writes.attempt("tensorboard", lambda: self._write_tensorboard(
            lambda writer: writer.add_image(tag, image, step, dataformats="HWC")))

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
        for handle in (self._jsonl, self._tensorboard):
            try:
                if handle is not None:
                    handle.close()
            except OSError as e:  # what the failed writes said already
                if not is_disk_error(e):
                    raise
        self._jsonl = self._tensorboard = None


class TrainMetrics:
    """What the trainer logs: every applied step joins the window (`add`; a skipped one is
    counted by `skip`), and at each logged step (`due`) the window's means and rates with the
    trainer's own scalars go to metrics.jsonl, TensorBoard and the progress line (rank 0)."""

    def __init__(self, run_dir: Path, tcfg, device: torch.device, world: int, start_step: int,
                 rank0: bool, writes: Optional[RunWrites] = None):
        self.logger = MetricsLogger(run_dir, tcfg.steps, start_step=start_step,
                                    writes=writes) if rank0 else None
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
