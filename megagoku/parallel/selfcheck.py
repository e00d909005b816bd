"""Pre-flight self-checks of a launched run, before any training (MegaScale runs the like on every
start): do the collectives give the right answers, how fast is an all-reduce, and can this rank
write a checkpoint (writable directory, room for one). Every rank checks; rank 0 gathers the
results, and a failure stops every rank with one message naming each failing rank and its host.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

PROBE_BYTES = 32 << 20  # all-reduce size for the bandwidth probe


class SelfCheckError(RuntimeError):
    pass


def storage_problem(directory: Path, needed_bytes: int) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{socket.gethostname()}-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"megagoku")
            os.fsync(f.fileno())
        probe.unlink()
        free = shutil.disk_usage(directory).free
    except OSError as e:
        return f"{directory}: cannot write a checkpoint there ({e})"
    if free < needed_bytes:
        return (f"{directory}: {free / 1e9:.2f} GB free, a checkpoint needs about "
                f"{needed_bytes / 1e9:.2f} GB")
    return None


def collective_problem(device: torch.device) -> str | None:
    world, rank = dist.get_world_size(), dist.get_rank()
    total = torch.tensor([float(rank)], device=device)
    dist.all_reduce(total)
    if total.item() != world * (world - 1) / 2:
        return f"all-reduce of the ranks gave {total.item()}, expected {world * (world - 1) / 2}"
    sent = torch.full((world,), float(rank), device=device)
    received = torch.empty_like(sent)
    dist.all_to_all_single(received, sent)
    if not torch.equal(received.cpu(), torch.arange(world, dtype=torch.float32)):
        return f"all-to-all gave {received.tolist()}, expected {list(range(world))}"
    return None


def allreduce_bandwidth(device: torch.device) -> float:
    """Bus bandwidth (bytes/s) of an all-reduce of PROBE_BYTES, the NCCL-tests convention:
    2 (n - 1) / n of the bytes per rank per second."""
    world = dist.get_world_size()
    buffer = torch.ones(PROBE_BYTES // 4, device=device)
    dist.all_reduce(buffer)  # warm-up: connections, algorithms
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        dist.all_reduce(buffer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 3
    return 2 * (world - 1) / world * PROBE_BYTES / seconds


def self_check(checkpoint_dir: Path, needed_bytes: int, device: torch.device) -> dict:
    """Run the checks on every rank (collective); raise SelfCheckError naming the failing ranks
    and hosts. Returns what was measured (rank 0 logs it)."""
    problems = []
    storage = storage_problem(checkpoint_dir, needed_bytes)
    if storage:
        problems.append(storage)
    bandwidth = 0.0
    if dist.get_world_size() > 1:
        collective = collective_problem(device)
        if collective:
            problems.append(collective)
        else:
            bandwidth = allreduce_bandwidth(device)
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, (dist.get_rank(), socket.gethostname(), problems))
    failing = [f"rank {r} ({host}): {'; '.join(p)}" for r, host, p in reports if p]
    if failing:
        raise SelfCheckError("pre-flight self-check failed: " + " | ".join(failing))
    result = {"ranks": len(reports), "hosts": len({h for _, h, _ in reports}),
              "allreduce_bus_gbps": round(bandwidth / 1e9, 3)}
    if dist.get_rank() == 0:
        log.info("pre-flight self-check passed on %d ranks (%d hosts): collectives right, "
                 "all-reduce %.2f GB/s bus bandwidth, checkpoint dir writable with room",
                 result["ranks"], result["hosts"], result["allreduce_bus_gbps"])
    return result
