"""Start torch.distributed from whatever launched us: one function, `init_distributed()`.

| launcher | how we know | rank / world / local rank | rendezvous |
|---|---|---|---|
| torchrun | `TORCHELASTIC_RUN_ID` or `RANK` + `WORLD_SIZE` | `RANK`, `WORLD_SIZE`, `LOCAL_RANK` | `MASTER_ADDR:MASTER_PORT` |
| `deepspeed` launcher | `--local_rank=N` in argv (it sets the env too) | env, local rank from argv | same |
| `srun` | `SLURM_STEP_ID` + `SLURM_PROCID` | `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` (or `SLURM_NTASKS`), `SLURM_LOCALID` | first host of `SLURM_STEP_NODELIST` / `SLURM_JOB_NODELIST`; port `MASTER_PORT` or one derived from the job id |
| `mpirun` | `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE` or `PMIX_RANK` | mpi4py's `COMM_WORLD` (env as fallback); local rank from a shared-memory split | rank 0's host, broadcast over MPI; port `MASTER_PORT` or 29500 |
| nothing | none of the above | 0 / 1 / 0 | an in-memory store, no port |

torch has no MPI backend: MPI only tells us who we are, then gloo (CPU) or NCCL (GPU) does the
work. A torchrun/srun started process with `MASTER_ADDR` set explicitly keeps it.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Sequence

import torch
import torch.distributed as dist

DEFAULT_PORT = 29500
# `megagoku launch` sets it: rank 0's store listens on MASTER_ADDR's address only (_bound_store).
BIND_STORE_ENV = "MEGAGOKU_BIND_STORE"


@dataclass(frozen=True)
class LaunchInfo:
    launcher: str  # torchrun | deepspeed | srun | mpirun | none
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `gpu[003-005,9],cpu1` -> `gpu003`."""
    nodelist = nodelist.strip()
    match = re.match(r"([^,\[]*)(?:\[([^\]]+)\])?", nodelist)
    if not match or not match.group(0):
        raise ValueError(f"cannot read Slurm node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _local_rank_from_argv(argv: Sequence[str]) -> int | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            return int(arg.split("=", 1)[1])
        if arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            return int(argv[i + 1])
    return None


def strip_local_rank(argv: Sequence[str]) -> list[str]:
    """argv without the `--local_rank N` the deepspeed launcher inserts before our arguments."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--local_rank", "--local-rank"):
            skip = True
            continue
        if not (arg.startswith("--local_rank=") or arg.startswith("--local-rank=")):
            out.append(arg)
    return out


def _mpi_world() -> tuple[int, int, int, str] | None:
    """(rank, size, local rank, rank 0's host) from mpi4py, or None without it."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    host = comm.bcast(socket.gethostname() if comm.Get_rank() == 0 else None, root=0)
    return comm.Get_rank(), comm.Get_size(), local.Get_rank(), host


def discover(env: Mapping[str, str] | None = None,
             argv: Sequence[str] | None = None, use_mpi4py: bool = True) -> LaunchInfo:
    env = os.environ if env is None else env
    argv = sys.argv if argv is None else argv
    port = int(env.get("MASTER_PORT", DEFAULT_PORT))
    argv_local = _local_rank_from_argv(argv)
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "deepspeed" if argv_local is not None else "torchrun"
        local = argv_local if argv_local is not None else int(env.get("LOCAL_RANK", 0))
        return LaunchInfo(launcher, int(env["RANK"]), int(env["WORLD_SIZE"]), local,
                          env.get("MASTER_ADDR", "127.0.0.1"), port)
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
        nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        addr = env.get("MASTER_ADDR") or first_host(nodes)
        if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
            port = 12000 + int(env["SLURM_JOB_ID"]) % 20000  # same on every task of the job
        return LaunchInfo("srun", int(env["SLURM_PROCID"]), world,
                          int(env.get("SLURM_LOCALID", 0)), addr, port)
    if any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        mpi = _mpi_world() if use_mpi4py else None
        if mpi is not None:
            rank, world, local, host = mpi
        else:
            rank = int(env.get("OMPI_COMM_WORLD_RANK", env.get("PMI_RANK", env.get("PMIX_RANK", 0))))
            world = int(env.get("OMPI_COMM_WORLD_SIZE", env.get("PMI_SIZE", 1)))
            local = int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", env.get("MPI_LOCALRANKID", 0)))
            host = env.get("MASTER_ADDR", "127.0.0.1")
        return LaunchInfo("mpirun", rank, world, local, env.get("MASTER_ADDR", host), port)
    return LaunchInfo("none", 0, 1, 0, "127.0.0.1", port)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str = "auto", timeout_minutes: float = 30.0) -> LaunchInfo:
    """Start the process group for whatever launched us (idempotent). Sets this process's GPU
    to its local rank when there is one."""
    global _started_here
    info = discover()
    if dist.is_initialized():
        return info
    _started_here = True
    if info.launcher in ("srun", "mpirun"):  # DeepSpeed reads torchrun's variables
        for name, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size),
                            ("LOCAL_RANK", info.local_rank), ("MASTER_ADDR", info.master_addr),
                            ("MASTER_PORT", info.master_port)):
            os.environ.setdefault(name, str(value))
    backend = default_backend() if backend == "auto" else backend
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    timeout = timedelta(minutes=timeout_minutes)
    if info.world_size == 1 and info.launcher == "none":
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
        return info
    if os.environ.get(BIND_STORE_ENV) == "1":  # set by `megagoku launch`
        dist.init_process_group(backend, store=_bound_store(info, timeout), rank=info.rank,
                                world_size=info.world_size, timeout=timeout)
        return info
    dist.init_process_group(backend, init_method=f"tcp://{info.master_addr}:{info.master_port}",
                            rank=info.rank, world_size=info.world_size, timeout=timeout)
    return info


def _bound_store(info: LaunchInfo, timeout: timedelta) -> dist.TCPStore:
    """The store `init_process_group` would make, with rank 0's server listening on the address
    MASTER_ADDR resolves to (127.0.0.1 for a single-node `megagoku launch`) instead of on every
    interface: TCPStore has no authentication (megagoku/launch/stores.py)."""
    if info.rank != 0:
        return dist.TCPStore(info.master_addr, info.master_port, info.world_size, False, timeout)
    infos = socket.getaddrinfo(info.master_addr, info.master_port, proto=socket.IPPROTO_TCP)
    family, _, _, _, address = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(4096)
    return dist.TCPStore(info.master_addr, info.master_port, info.world_size, True, timeout,
                         master_listen_fd=sock.detach())


# Whether init_distributed started this process's group: shutdown ends only a group it started,
# never one its caller already held (a program, or a test session, that runs a tool in-process
# and goes on using its group and megatron's).
_started_here = False


def shutdown(barrier: bool = True) -> None:
    """End the process group init_distributed started. Call last: gloo can abort at interpreter
    exit otherwise (../shared/docs/cpu-facts.md). `barrier=False` after a failure: the other
    ranks may never reach the barrier (they failed too, or wait in a collective this rank
    left)."""
    global _started_here
    if dist.is_initialized() and _started_here:
        _started_here = False
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
