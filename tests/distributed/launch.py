"""Start N ranks of a worker script on this machine the way torchrun does (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), wait for all, fail with their output if any fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def end_worker() -> None:
    """The end of a worker process: its process group closed and its output flushed, then
    os._exit(0), which skips the interpreter's teardown (gloo can abort in it:
    ../shared/docs/cpu-facts.md)."""
    from megagoku.parallel.distributed import shutdown

    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(n: int, args: list[str], timeout: float = 300, extra_env: dict | None = None,
              rank_env=None) -> list[str]:
    """Run `python args...` as n ranks; returns each rank's stdout. `rank_env(rank, port)` may
    give the rank's launcher variables instead of torchrun's."""
    port = free_port()
    procs = []
    for rank in range(n):
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        if rank_env is None:
            env.update(RANK=str(rank), WORLD_SIZE=str(n), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        else:
            env.update(rank_env(rank, port))
        env.update(extra_env or {})
        procs.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        if proc.returncode != 0:
            raise AssertionError(f"rank {rank} exited {proc.returncode}:\n{out[-4000:]}")
    return outputs


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

