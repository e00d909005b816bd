"""Start N ranks of a Python script or module on this machine the way torchrun does (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free loopback port), wait for all, and
return each rank's output, or fail naming the rank that failed. `megagoku bench memory` starts
its ranks with it, and the tests their multi-process workers (tests/distributed/launch.py).

Each rank's output goes to a file of its own, not a pipe: a rank that writes more than a pipe
holds while the launcher waits on another rank would block, and with it every rank waiting for
it in a collective. When one rank fails the others usually wait in a collective for it until the
process group's timeout (30 minutes), so they get `grace` seconds to end on their own, then are
killed, and the error names the rank that failed first, with the end of its output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TAIL_CHARS = 4000  # of a failed rank's output, in the error


class RankFailed(RuntimeError):
    """A local rank exited with an error or ran past the timeout."""


def free_port() -> int:
    """A TCP port free on loopback now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_variables(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun sets for local rank `rank` of a one-node run of `world_size`."""
    return dict(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def run_ranks(n: int, args: Sequence[str], timeout: float = 300,
              extra_env: Optional[Mapping[str, str]] = None,
              rank_env: Optional[Callable[[int, int], Mapping[str, str]]] = None,
              cwd: Optional[Path] = None, grace: float = 30) -> list[str]:
    """Run `python args...` (a script and its arguments, or `-m module ...`) as `n` ranks in
    `cwd`; returns each rank's output (stdout and stderr), in rank order. Every rank sees this
    process's environment without its launcher variables, one OpenMP thread, then its own
    launcher variables (torchrun's, or `rank_env(rank, port)`: another launcher's), then
    `extra_env`. Raises RankFailed when a rank exits non-zero or the ranks are not all done
    within `timeout` seconds."""
    port = free_port()
    procs, logs = [], []
    try:
        for rank in range(n):
            env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
            env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
            env.update(torchrun_variables(rank, n, port) if rank_env is None
                       else rank_env(rank, port))
            env.update(extra_env or {})
            logs.append(tempfile.TemporaryFile(mode="w+", prefix=f"megagoku-rank{rank}-"))
            procs.append(subprocess.Popen([sys.executable, *args], cwd=cwd, env=env,
                                          stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
        failed = _wait(procs, timeout, grace)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    if failed is not None:
        rank, why = failed
        raise RankFailed(f"rank {rank} of {n} ({' '.join(args)[:200]}) {why}:\n"
                         f"{outputs[rank][-TAIL_CHARS:]}")
    return outputs


def _wait(procs: list[subprocess.Popen], timeout: float,
          grace: float) -> Optional[tuple[int, str]]:
    """Wait for every process; (the rank that failed first, how) or None. Once one has failed,
    the rest get `grace` seconds, then are killed."""
    deadline = time.monotonic() + timeout
    failed = None
    while True:
        codes = [proc.poll() for proc in procs]
        if failed is None:
            failed = next(((rank, f"exited {code}") for rank, code in enumerate(codes)
                           if code not in (None, 0)), None)
            if failed is not None:
                deadline = min(deadline, time.monotonic() + grace)
        if all(code is not None for code in codes):
            return failed
        if time.monotonic() > deadline:
            if failed is None:
                running = [rank for rank, code in enumerate(codes) if code is None]
                failed = (running[0], f"still running after {timeout:g} s (killed, with "
                                      f"every rank still running: {running})")
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for proc in procs:
                proc.wait()
            return failed
        time.sleep(0.05)
