"""The run directory: where a run starts from. A new run refuses (or, asked to, clears) an old
run's outputs; a resumed one continues from its newest valid checkpoint; a new stage starts from
another run's weights. Rank 0 decides and every rank follows its choice."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megagoku.config import CheckpointConfig, ConfigError
from megagoku.parallel import collectives
from megagoku.train.anomaly import SKIP_FILE
from megagoku.train.checkpoint import (CheckpointReader, ModelDirReader, find_checkpoint,
                                       find_weights, open_weights, remove_stale_parts)

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run never mixes with an old one's metrics or checkpoints: refuse a used run dir, or
    clear our own outputs from it."""
    used = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if used and not overwrite:
        raise ConfigError(f"{run_dir}: run dir already holds {', '.join(used)}; pass --overwrite "
                          "to replace them, --resume auto to continue, or choose another "
                          "--run-dir")
    for name in used:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def resume_point(run_dir: Path, resume: str) -> Optional[Path]:
    """The checkpoint `checkpoint.resume` names: none -> None; auto -> the run dir's newest valid
    checkpoint, or None when it has none yet (a first start, or a crash before the first save);
    a path -> that checkpoint (or that run dir's newest valid one). Broken checkpoints are
    reported and passed over, never loaded."""
    if resume == "none":
        return None
    if resume == "auto":
        if not any((run_dir / "checkpoints").glob("step_*")):
            return None
        return find_checkpoint(run_dir)
    return find_checkpoint(resume)


def agree_on_path(path: Optional[Path]) -> Optional[Path]:
    """Rank 0's choice, on every rank (the others do not re-verify the checksums)."""
    chosen = collectives.from_rank0(None if path is None else str(path))
    return None if chosen is None else Path(chosen)


@dataclass
class Start:
    """Where a run starts: a checkpoint of its own to resume (`reader`), another run's weights
    to begin from (`init`), or neither (the seed's weights)."""

    reader: Optional[CheckpointReader] = None
    init: Optional[CheckpointReader | ModelDirReader] = None


def open_run(run_dir: Path, resume: str, overwrite: bool, ccfg: CheckpointConfig, rank0: bool,
             source: str) -> Start:
    """Decide on rank 0, agree on every rank, and prepare the run dir (collective)."""
    resume_from = None
    if rank0:
        resume_from = resume_point(run_dir, resume)
        if resume_from is None:
            prepare_run_dir(run_dir, overwrite or resume == "auto")
        else:
            remove_stale_parts(run_dir / "checkpoints")
        if overwrite and resume_from is None:  # a new run: an old run's skips do not apply
            (run_dir / SKIP_FILE).unlink(missing_ok=True)
    resume_from = agree_on_path(resume_from)
    start = Start(CheckpointReader(resume_from, verified=True) if resume_from else None)
    if start.reader is None and ccfg.init_from:  # a checkpoint, a run dir, or a model dir
        start.init = open_weights(agree_on_path(find_weights(ccfg.init_from) if rank0 else None))
        if ccfg.init_optimizer and isinstance(start.init, ModelDirReader):
            raise ConfigError(f"{source}: checkpoint.init_optimizer: {start.init.path} is a "
                              "model directory (weights only, no optimizer state)")
    collectives.barrier()
    return start
