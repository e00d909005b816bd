"""Start N ranks of a worker script on this machine the way torchrun does (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), wait for all, fail with their output if any fails
(`megagoku.parallel.local_ranks`, from the repository root); or under torchrun itself
(`torchrun_train`); train here as such a rank does (`train_as_a_rank`); and end a worker."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from megagoku.parallel import local_ranks
from megagoku.parallel.local_ranks import free_port  # noqa: F401 (the tests' import)

ROOT = Path(__file__).resolve().parents[2]


def train_as_a_rank(*args, **kwargs):
    """`megagoku.train.trainer.train` in this process, on one thread as the launched ranks
    (OMP_NUM_THREADS=1): the same float sums, so a one-process reference differs from a layout
    by the layout alone."""
    import torch

    from megagoku.train.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def end_worker() -> None:
    """The end of a worker process: its process group closed and its output flushed, then
    os._exit(0), which skips the interpreter's teardown (gloo can abort in it:
    ../shared/docs/cpu-facts.md)."""
    from megagoku.parallel.distributed import shutdown

    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# The repository's scripts (tests/distributed/*_worker.py) are named relative to its root.
run_ranks = functools.partial(local_ranks.run_ranks, cwd=ROOT)


def torchrun_train(run_dir: Path, overrides: list[str], extra: list[str] = (),
                   nproc: int = 2) -> subprocess.CompletedProcess:
    """`megagoku train --config configs/tiny.yaml --set ...` under torchrun on `nproc` gloo
    processes, in a clean environment; fails with the output if it fails."""
    sets = [arg for kv in overrides for arg in ("--set", kv)]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
         f"--master_port={free_port()}", "-m", "megagoku", "train", "--config",
         "configs/tiny.yaml", "--run-dir", str(run_dir), *sets, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc

