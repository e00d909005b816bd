"""Started by a launcher in tests/parallel/test_distributed.py: start the process group from
whatever launched us, all-reduce the ranks, print one line, exit cleanly."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megagoku.parallel.distributed import init_distributed, shutdown  # noqa: E402

info = init_distributed("gloo")
total = torch.tensor([float(dist.get_rank())])
dist.all_reduce(total)
print(f"START launcher={info.launcher} rank={info.rank} world={info.world_size} "
      f"local={info.local_rank} sum={int(total.item())}", flush=True)
shutdown()
os._exit(0)
