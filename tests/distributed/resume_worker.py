"""One rank of the save x load matrix's two-process runs (tests/train/test_resume_matrix.py): in
one process group, train every asked-for save layout uninterrupted, then resume each asked-for
checkpoint under each asked-for load layout (and start new stages from one), rebuilding the grid between runs (the trainer's
`initialize_groups` replaces the previous one).

argv[1]: JSON {"root": DIR, "saves": [layout, ...], "cells": [[save, load], ...], "inits":
[layout, ...]}; runs go to DIR/save/<save>, DIR/resume/<save>__<load> and DIR/init/<layout> (new
stages from the INIT_FROM checkpoint with its optimizer state; see `resume_matrix`).

Each run starts as a launched one would: DeepSpeed's ZeRO-3 engine replaces
`torch.nn.functional.linear` with its memory-efficient linear for the rest of the process, which
rounds differently (~1e-7 after two steps), so every run after one under ZeRO-3 gets torch's own
back (a ZeRO-3 run patches it again itself)."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from megagoku.config import load_training_config  # noqa: E402
from megagoku.parallel.distributed import init_distributed  # noqa: E402
from megagoku.train.trainer import train  # noqa: E402
from tests.distributed.launch import end_worker  # noqa: E402
from tests.distributed import resume_matrix  # noqa: E402
from tests.distributed.launch import ROOT  # noqa: E402

LINEAR = torch.nn.functional.linear


def train_as_launched(*args, **kwargs) -> None:
    torch.nn.functional.linear = LINEAR
    try:
        train(*args, **kwargs)
    finally:
        torch.nn.functional.linear = LINEAR


def main() -> None:
    spec = json.loads(sys.argv[1])
    root = Path(spec["root"])
    init_distributed("gloo")
    torch.set_num_threads(1)
    for save in spec["saves"]:
        start = time.perf_counter()
        train_as_launched(
            load_training_config(ROOT / "configs/tiny.yaml", resume_matrix.overrides(save)),
            resume_matrix.run_dir(root, save))
        print(f"saved under {save}: {time.perf_counter() - start:.1f} s", flush=True)
    torch.distributed.barrier()
    for save, load in spec["cells"]:
        start = time.perf_counter()
        train_as_launched(
            load_training_config(ROOT / "configs/tiny.yaml", resume_matrix.overrides(load)),
            resume_matrix.run_dir(root, save, load),
            resume=str(resume_matrix.checkpoint(root, save, resume_matrix.RESUME_AT)))
        print(f"{save} -> {load}: {time.perf_counter() - start:.1f} s", flush=True)
    for layout in spec.get("inits", []):
        train_as_launched(load_training_config(ROOT / "configs/tiny.yaml",
                                               resume_matrix.init_overrides(root, layout)),
                          resume_matrix.init_dir(root, layout))
    end_worker()


if __name__ == "__main__":
    main()
