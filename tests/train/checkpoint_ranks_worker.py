"""Started as 2 gloo ranks by tests/train/test_checkpoint_ranks.py: saves through the store,
a rank whose write fails, and a resume that verifies its checkpoint over both ranks. Prints one
JSON line per rank."""

import errno
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import megagoku.train.checkpoint as checkpoint  # noqa: E402
import megagoku.train.checkpointer as checkpointer  # noqa: E402
from megagoku.parallel import collectives  # noqa: E402
from megagoku.parallel.distributed import init_distributed, shutdown  # noqa: E402
from megagoku.train.checkpointer import Checkpointer  # noqa: E402
from megagoku.train.run_dir import resume_point  # noqa: E402

run_dir = Path(sys.argv[1])
init_distributed("gloo")
rank, world = collectives.rank(), collectives.world_size()
result = {"rank": rank}


def never_polled(*args, **kwargs):
    raise AssertionError("rank 0 polled for marker files")


# With a process group, markers use its store.
checkpoint.wait_for_markers = checkpointer.wait_for_markers = never_polled


def tensors(value: float) -> dict:
    everything = {f"model/t{i}": torch.full((64, 8), value + i) for i in range(6)}
    owner = checkpoint.assign_writers({k: v.numel() * 4 for k, v in everything.items()}, world)
    return {k: v for k, v in everything.items() if owner[k] == rank}


saver = Checkpointer(run_dir, rank, world, async_save=True, keep_last=5, commit_timeout_s=120)
for step in (1, 3):
    saver.persist(step, tensors(float(step)), {"rank": rank}, {"name": "x"}, {"loader": {}})
    result[f"saved_{step}"] = str(saver.wait())
    collectives.barrier()
result["marker_files"] = sorted(p.name for p in run_dir.rglob("rank-*.json"))

# Rank 1's disk is full at step 5: rank 0 hears it through the store at once.
real_save_file = checkpoint.save_file
if rank == 1:
    def full_disk(tensors, path):
        raise OSError(errno.ENOSPC, "No space left on device")
    checkpoint.save_file = full_disk
start = time.monotonic()
saver.persist(5, tensors(5.0), {"rank": rank}, {"name": "x"}, {"loader": {}})
try:
    saver.wait()
    result["failed_5"] = None
except checkpoint.CheckpointError as e:
    result["failed_5"] = str(e)
result["failure_seen_s"] = time.monotonic() - start
checkpoint.save_file = real_save_file
collectives.barrier()

# Step 3's file that rank 1 checks is altered: both ranks agree to pass it over, and each rank
# hashed only its own share of the files.
step3 = run_dir / "checkpoints" / "step_00000003"
files = checkpoint.tensor_files(json.loads((step3 / "manifest.json").read_text()))
if rank == 0:
    data = bytearray((step3 / files[1]).read_bytes())
    data[-1] ^= 1
    (step3 / files[1]).write_bytes(bytes(data))
collectives.barrier()
hashed = []
real_checksum = checkpoint.file_checksum


def counting(path, algorithm="xxh3_128", start=0, **kwargs):
    hashed.append(Path(path).name)
    return real_checksum(path, algorithm, start, **kwargs)


checkpoint.file_checksum = counting
result["resumed_from"] = str(resume_point(run_dir, "auto", rank == 0))
result["hashed"] = hashed
print("RESULT " + json.dumps(result), flush=True)
shutdown()
os._exit(0)
