"""The run directory: where a run starts from. Rank 0 first owns the dir (`run_lock.py`: a live
run's dir is never touched by another); a new run refuses (or, asked to, clears) an old run's
outputs; a resumed one continues from its newest valid checkpoint (`--resume auto` with none yet
starts at step 0 and appends to the earlier attempt's logs); a new stage starts from another
run's weights. Rank 0 decides and every rank follows its choice; a failure of rank 0's decision
is raised on every rank (none is left waiting for it).

Verifying a checkpoint is shared out: every rank checks the metadata and every W-th tensor
file (`checkpoint.verify_checkpoint(path, rank, W)`), all in parallel, and the ranks agree on the
verdict (the first failure found, the same line on every rank) before anything is loaded. At
Goku-8B size (~129 GB of weights, EMA and moments), sha256 of everything on rank 0 took ~2
minutes; BENCHMARKS.md has the measured figures of both ways."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

from megagoku.config import CheckpointConfig, ConfigError
from megagoku.parallel import collectives
from megagoku.train.anomaly import SKIP_FILE
from megagoku.train.checkpoint import (CheckpointError, CheckpointReader, ModelDirReader,
                                       checkpoint_candidates, first_valid, is_model_dir,
                                       open_weights, remove_stale_parts, verify_checkpoint,
                                       verify_model_dir)
from megagoku.train.run_lock import RunDirBusy, RunLock

log = logging.getLogger(__name__)
T = TypeVar("T")
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


def resume_candidates(run_dir: Path, resume: str) -> tuple[list[Path], bool]:
    """The checkpoints `checkpoint.resume` names, newest first, and whether the user named one
    checkpoint (which must then be valid): none -> none; auto -> the run dir's committed
    checkpoints, or none yet (a first start, or a crash before the first save); a path -> that
    checkpoint, or that run dir's."""
    if resume == "none":
        return [], False
    if resume == "auto":
        if not any((run_dir / "checkpoints").glob("step_*")):
            return [], False
        return checkpoint_candidates(run_dir)
    return checkpoint_candidates(resume)


def decided_on_rank0(decide: Callable[[], T], rank0: bool) -> T:
    """`decide()` on rank 0, its result on every rank; its ConfigError or CheckpointError is
    raised on every rank (a failure on rank 0 alone would leave the others waiting)."""
    assert rank0 == (collectives.rank() == 0)
    return collectives.rank0_decides(decide, (RunDirBusy, ConfigError, CheckpointError))


def verify_together(path: Path) -> None:
    """Every rank checks its share of checkpoint `path` (collective); the first failure, the
    same on every rank, as CheckpointError."""
    try:
        verify_checkpoint(path, collectives.rank(), collectives.world_size())
        mine = None
    except CheckpointError as e:
        mine = str(e)
    failures = [f for f in collectives.gather_objects(mine) if f is not None]
    if failures:
        raise CheckpointError(failures[0])


def agreed_checkpoint(source: str | Path, rank0: bool,
                      find: Callable[[], tuple[list[Path], bool]]) -> Optional[Path]:
    """The first valid checkpoint of those `find()` lists on rank 0, verified together
    (collective); None when it lists none."""
    candidates, named = decided_on_rank0(lambda: (lambda c, n: ([str(p) for p in c], n))(*find()),
                                         rank0)
    if not candidates:
        return None
    return first_valid(source, [Path(c) for c in candidates], named, verify_together)


def resume_point(run_dir: Path, resume: str, rank0: bool = True) -> Optional[Path]:
    """The checkpoint `checkpoint.resume` names (collective): broken checkpoints are reported and
    passed over, never loaded; None when there is none."""
    source = run_dir if resume in ("auto", "none") else resume
    return agreed_checkpoint(source, rank0, lambda: resume_candidates(run_dir, resume))


def init_point(init_from: str, rank0: bool) -> Path:
    """`checkpoint.init_from` (collective): a model directory (its one file, checked on rank 0),
    an official-layout file (train/official.py), or a checkpoint or run dir (its newest valid
    checkpoint, verified together)."""
    from megagoku.train.official import is_official_file

    def one_file() -> bool:
        if is_official_file(init_from):
            return True
        if not is_model_dir(init_from):
            return False
        verify_model_dir(Path(init_from))
        return True

    if decided_on_rank0(one_file, rank0):
        return Path(init_from)
    return agreed_checkpoint(init_from, rank0, lambda: checkpoint_candidates(init_from))


@dataclass
class Start:
    """Where a run starts: a checkpoint of its own to resume (`reader`), another run's weights
    to begin from (`init`), or neither (the seed's weights); and rank 0's hold on the run dir
    (`lock`, None elsewhere), to release when the run ends."""

    reader: Optional[CheckpointReader] = None
    init: Optional[CheckpointReader | ModelDirReader] = None
    lock: Optional[RunLock] = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def prepare_for(run_dir: Path, resume: str, overwrite: bool,
                resume_from: Optional[Path]) -> None:
    """Rank 0, owning the dir: make it ready for the chosen start. Only the owner clears
    anything."""
    if resume_from is not None:
        remove_stale_parts(run_dir / "checkpoints")
    elif resume == "auto" and not overwrite:
        # No checkpoint yet (a first start, or a crash before the first save): a new run that
        # keeps the earlier attempt's logs and appends to them.
        if (run_dir / "checkpoints").is_dir():
            remove_stale_parts(run_dir / "checkpoints")
        if any((run_dir / name).exists() for name in RUN_OUTPUTS):
            log.info("%s: no checkpoint yet; starting at step 0 and appending to its logs",
                     run_dir)
    else:
        prepare_run_dir(run_dir, overwrite)
    if overwrite and resume_from is None:  # a new run: an old run's skips do not apply
        (run_dir / SKIP_FILE).unlink(missing_ok=True)


def open_run(run_dir: Path, resume: str, overwrite: bool, ccfg: CheckpointConfig, rank0: bool,
             source: str) -> Start:
    """Own the run dir on rank 0 (RunDirBusy, on every rank, while another run does), then
    decide on rank 0, verify together, agree on every rank, and prepare the run dir
    (collective)."""
    start = Start()

    def claim() -> None:
        start.lock = RunLock(run_dir, ccfg.run_lock, ccfg.lease_s).acquire()

    decided_on_rank0(claim, rank0)
    try:
        resume_from = resume_point(run_dir, resume, rank0)
        decided_on_rank0(lambda: prepare_for(run_dir, resume, overwrite, resume_from), rank0)
        allow = ccfg.allow_nonfinite
        if resume_from is not None:
            start.reader = CheckpointReader(resume_from, verified=True, allow_nonfinite=allow)
        elif ccfg.init_from:  # a checkpoint, a run dir, or a model dir
            start.init = open_weights(init_point(ccfg.init_from, rank0), allow)
            if ccfg.init_optimizer and isinstance(start.init, ModelDirReader):
                raise ConfigError(f"{source}: checkpoint.init_optimizer: {start.init.path} is a "
                                  "model directory (weights only, no optimizer state)")
        collectives.barrier()
    except BaseException:
        start.release()
        raise
    return start
