"""`megagoku bench checkpoint --ranks N` (part two): what a checkpoint costs at full width, on N
gloo ranks of this machine, the old way and ours in the same run.

- Resume verification: before, rank 0 hashed every file with sha256 while the other ranks
  waited; now every rank checks the metadata and its own share of the tensor files with xxh3-128
  (`run_dir.verify_together`), and the ranks agree. Reported against the limit of the same
  reads without any checksum (every rank reading its share at once).
- Commit latency: from the last rank's tensor file on disk to the checkpoint committed
  (`SaveStats.commit_latency_s`). Before, rank 0 polled marker files every 20 ms; now the
  markers come through the process group's store.

The checkpoint is `--mb` MB of fp32 tensors spread over the ranks as training spreads them
(`assign_writers`), written to `--dir`; the files are in the page cache when verified (what a
resume right after a save sees; a cold parallel filesystem is slower for both ways alike).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from megagoku.parallel.distributed import init_distributed, shutdown

TENSORS = 64
REPEATS = 3


def _tensors(megabytes: float, rank: int, world: int) -> dict[str, torch.Tensor]:
    from megagoku.train.checkpoint import assign_writers

    numel = max(1, int(megabytes * 1e6 / 4 / TENSORS))
    owner = assign_writers({f"model/t{i:03d}": numel * 4 for i in range(TENSORS)}, world)
    generator = torch.Generator().manual_seed(rank)
    return {k: torch.rand(numel, generator=generator) for k, r in owner.items() if r == rank}


def _read_share(path: Path, rank: int, world: int) -> int:
    """Read this rank's share of the tensor files, no checksum: the limit of the verification."""
    from megagoku.train.checkpoint import read_manifest, tensor_files

    buffer = bytearray(1 << 23)
    total = 0
    for name in tensor_files(read_manifest(path))[rank::world]:
        with open(path / name, "rb") as f:
            while n := f.readinto(buffer):
                total += n
    return total


def _timed(fn) -> float:
    """Wall seconds of a collective step, barrier to barrier (the slowest rank's time)."""
    from megagoku.parallel import collectives

    collectives.barrier()
    start = time.perf_counter()
    fn()
    collectives.barrier()
    return time.perf_counter() - start


def worker(index: int, world: int, port: int, megabytes: float, saves: int, base: str,
           result_file: str) -> None:
    os.environ.update(RANK=str(index), WORLD_SIZE=str(world), LOCAL_RANK=str(index),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed("gloo")
    from megagoku.parallel import collectives
    from megagoku.train.checkpoint import read_manifest, sha256_of
    from megagoku.train.checkpointer import Checkpointer
    from megagoku.train.run_dir import verify_together

    rank = collectives.rank()
    try:
        tensors = _tensors(megabytes, rank, world)
        latency = {}
        for way in ("files", "store"):
            saver = Checkpointer(Path(base) / way, rank, world, async_save=False, keep_last=1,
                                 markers=way)
            for step in range(1, saves + 1):
                collectives.barrier()
                saver.persist(step, tensors, {"rank": rank}, {"bench": True}, {"loader": {}})
                saver.wait()
            latency[way] = saver.stats.commit_latency_s
        collectives.barrier()  # rank 0's last commit is done
        path = Path(base) / "store" / "checkpoints" / f"step_{saves:08d}"
        files = read_manifest(path)
        nbytes = sum(e["bytes"] for e in files.values())

        def sha256_on_rank0() -> None:  # what a resume did before
            if rank == 0:
                for name in files:
                    sha256_of(path / name)
            collectives.from_rank0(str(path))

        verify = {"sha256_rank0": [], "xxh3_shared": [], "read_only": []}
        for _ in range(REPEATS):
            verify["sha256_rank0"].append(_timed(sha256_on_rank0))
            verify["xxh3_shared"].append(_timed(lambda: verify_together(path)))
            verify["read_only"].append(_timed(lambda: _read_share(path, rank, world)))
        if rank == 0:
            Path(result_file).write_text(json.dumps({
                "bytes": nbytes, "files": len(files), "latency": latency,
                "verify": {k: statistics.median(v) for k, v in verify.items()}}))
    finally:
        shutdown()


def measure(ranks: int, megabytes: float, saves: int, directory: str | None) -> dict:
    """Start `ranks` workers (spawned, one gloo group on loopback); rank 0's results."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = Path(tempfile.mkdtemp(prefix="megagoku-bench-ranks-", dir=directory))
    try:
        result_file = base / "result.json"
        mp.start_processes(worker, args=(ranks, port, megabytes, saves, str(base),
                                         str(result_file)),
                           nprocs=ranks, start_method="spawn")
        return json.loads(result_file.read_text())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def report(ranks: int, saves: int, result: dict) -> None:
    gb = result["bytes"] / 1e9
    v = result["verify"]
    before, ours, limit = v["sha256_rank0"], v["xxh3_shared"], v["read_only"]
    print(f"resume verification on {ranks} ranks: {result['bytes'] / 1e6:.0f} MB in "
          f"{result['files']} files (in the page cache), median of {REPEATS}")
    print(f"  sha256, rank 0 alone (before):   {before:.3f} s ({gb / before:.2f} GB/s)")
    print(f"  xxh3-128, each rank its files:   {ours:.3f} s ({gb / ours:.2f} GB/s); "
          f"{before / ours:.1f}x faster")
    print(f"  limit, the same reads unhashed:  {limit:.3f} s ({gb / limit:.2f} GB/s); ours at "
          f"{limit / ours:.0%} of it")
    files = statistics.median(result["latency"]["files"])
    store = statistics.median(result["latency"]["store"])
    print(f"commit latency on {ranks} ranks (last part on disk -> committed), median of "
          f"{saves} saves:")
    print(f"  marker files polled every 20 ms (before): {files * 1e3:.1f} ms")
    print(f"  through the process group's store:        {store * 1e3:.1f} ms; "
          f"{files / store:.1f}x less")
