"""`megagoku bench checkpoint`: how long training is blocked per checkpoint, asynchronous against
synchronous, on the real state of a real model (weights, EMA, AdamW moments) of `--mb` MB.

Synchronous: snapshot + write + fsync + checksums + commit, all while training waits.
Asynchronous: training waits for the snapshot only (gathering the logical tensors and copying
them to host memory); the rest runs in a background thread. Target: blocked <= 5% of the
synchronous save. Reported with the limits of this machine measured in the same run: the
snapshot's copy rate against a plain copy of the same kind (host memory to host memory; on a GPU,
device to pinned host memory), and the persist rate against a raw sequential write + fsync of the
same number of bytes to the same directory. `--device cuda` keeps the state on the GPU, as in
training there.

Then, with `--ranks N` (default 2; 0 skips it), at full width on N gloo ranks: resume
verification (sha256 on rank 0, as before, against xxh3-128 with every rank checking its own
files) and commit latency (marker files polled, as before, against the process group's store);
see `bench_checkpoint_ranks.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

TARGET_BLOCKED_FRACTION = 0.05


def sized_model_config(megabytes: float):
    """A Goku config whose checkpoint (weights + EMA + two moments, fp32) is about `megabytes`."""
    from megagoku.config import ModelConfig

    hidden = 512
    per_block = 12 * hidden * hidden + 6 * hidden * hidden  # attention + MLP + adaLN, roughly
    depth = max(1, round(megabytes * 1e6 / 16 / per_block))
    return ModelConfig(name="bench", depth=depth, hidden_size=hidden, num_heads=8,
                       in_channels=16, patch_size=(1, 2, 2), text_dim=384)


def build_state(megabytes: float, device: torch.device):
    """(model, EMA, optimizer) on `device` after one AdamW step, so that every moment exists."""
    from megagoku.models import build_model
    from megagoku.parallel import ensure_single_process_groups
    from megagoku.optim import EMA

    ensure_single_process_groups()
    model = build_model(sized_model_config(megabytes)).to(device)
    ema = EMA(model, 0.99)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    return model, ema, optimizer


def raw_write_rate(directory: Path, nbytes: int) -> float:
    """Bytes per second of one sequential write + fsync of `nbytes` (the disk's limit here)."""
    block = os.urandom(1 << 22)
    path = directory / "raw.bin"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(max(1, nbytes // len(block))):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return max(1, nbytes // len(block)) * len(block) / elapsed


def memory_copy_rate(nbytes: int, device: torch.device) -> float:
    """Bytes per second of one copy from where the state lives to host memory (pinned when the
    state is on a GPU): the limit of the snapshot."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=device.type == "cuda")
    rates = []
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(nbytes / (time.perf_counter() - start))
    return max(rates[1:])


def run_checkpoint(args: argparse.Namespace) -> int:
    from megagoku.train.checkpointer import Checkpointer
    from megagoku.train.train_state import rng_state, snapshot_tensors

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    model, ema, optimizer = build_state(args.mb, device)
    generator = torch.Generator().manual_seed(0)
    base = Path(tempfile.mkdtemp(prefix="megagoku-bench-ckpt-", dir=args.dir))
    try:
        def save(saver: Checkpointer, step: int) -> tuple[float, int]:
            start = time.perf_counter()
            saver.wait()
            tensors = snapshot_tensors(model, ema, optimizer, 0, 1, saver.to_host)
            saver.persist(step, tensors, rng_state(generator, 0, 1), {"bench": True},
                          {"loader": {}, "ema_updates": 0})
            return time.perf_counter() - start, sum(t.numel() * t.element_size()
                                                    for t in tensors.values())

        results = {}
        for mode in ("sync", "async"):
            saver = Checkpointer(base / mode, 0, 1, async_save=mode == "async", keep_last=1)
            blocked = []
            for step in range(1, args.saves + 1):
                seconds, nbytes = save(saver, step)
                blocked.append(seconds)
                saver.wait()  # measured apart: a save that finds one in flight waits for it
            results[mode] = (statistics.median(blocked), statistics.median(saver.stats.persist_s))
        raw = raw_write_rate(base, nbytes)
        copy = memory_copy_rate(min(nbytes, 1 << 28), device)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    sync_blocked, sync_persist = results["sync"]
    async_blocked, async_persist = results["async"]
    fraction = async_blocked / sync_blocked
    kind = "device-to-pinned-host" if device.type == "cuda" else "memory"
    mb = nbytes / 1e6
    print(f"checkpoint state: {mb:.0f} MB (weights, EMA, AdamW moments; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), "
          f"median of {args.saves} saves, on {where(device)}, written to "
          f"{args.dir or tempfile.gettempdir()}")
    print(f"  synchronous save: training blocked {sync_blocked:.3f} s")
    print(f"  asynchronous:     training blocked {async_blocked:.3f} s (snapshot to host memory "
          f"at {mb / async_blocked / 1e3:.2f} GB/s; plain {kind} copy {copy / 1e9:.2f} GB/s), "
          f"persist {async_persist:.3f} s in the background "
          f"({mb / async_persist:.0f} MB/s; raw write+fsync {raw / 1e6:.0f} MB/s)")
    verdict = "meets" if fraction <= TARGET_BLOCKED_FRACTION else "misses"
    print(f"  blocked async / sync = {fraction:.3f} ({1 / fraction:.1f}x less); {verdict} the "
          f"target of <= {TARGET_BLOCKED_FRACTION:.2f}")
    if args.ranks:
        from megagoku.tools import bench_checkpoint_ranks

        result = bench_checkpoint_ranks.measure(args.ranks, args.mb, args.saves, args.dir)
        bench_checkpoint_ranks.report(args.ranks, args.saves, result)
    return 0


def where(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"


def register(which) -> None:
    c = which.add_parser("checkpoint", help="training time blocked per save: async vs sync",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--mb", type=float, default=400, help="checkpoint size in MB (default 400)")
    c.add_argument("--saves", type=int, default=5, help="saves per mode (median; default 5)")
    c.add_argument("--dir", help="where to write (default: the temp dir); a cluster's "
                                 "checkpoint filesystem to measure that")
    c.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="where the state lives (cuda: snapshot into pinned host memory)")
    c.add_argument("--ranks", type=int, default=2,
                   help="resume verification and commit latency on this many gloo ranks, "
                        "before and now (default 2; 0 skips it)")
    c.set_defaults(func=run_checkpoint)
