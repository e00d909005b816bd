"""The run directory: where a run starts from. Rank 0 first owns the dir (`run_lock.py`: a live
run's dir is never touched by another); a new run refuses (or, asked to, clears) an old run's
outputs; a resumed one continues from its newest valid checkpoint (`--resume auto` with none yet
starts at step 0 and appends to the earlier attempt's logs); a new stage starts from another
run's weights. Rank 0 decides and every rank follows its choice."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megagoku.config import CheckpointConfig, ConfigError
from megagoku.parallel import collectives
from megagoku.train.anomaly import SKIP_FILE
from megagoku.train.checkpoint import (CheckpointError, CheckpointReader, ModelDirReader,
                                       find_checkpoint, find_weights, open_weights,
                                       remove_stale_parts)
from megagoku.train.run_lock import RunLock

log = logging.getLogger(__name__)

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


def claim_run_dir(run_dir: Path, resume: str, overwrite: bool, ccfg: CheckpointConfig
                  ) -> tuple[RunLock, Optional[Path], Optional[Path]]:
    """Rank 0: own the run dir (RunDirBusy while another run does), then choose the checkpoint
    to resume (or, for a new run, the weights of `init_from`) and prepare the dir for it. Only
    the owner may clear anything. Returns (the lock, the resume point, the init weights)."""
    lock = RunLock(run_dir, ccfg.run_lock, ccfg.lease_s).acquire()
    try:
        resume_from = resume_point(run_dir, resume)
        if resume_from is not None:
            remove_stale_parts(run_dir / "checkpoints")
        elif resume == "auto" and not overwrite:
            # No checkpoint yet (a first start, or a crash before the first save): a new run
            # that keeps the earlier attempt's logs and appends to them.
            if (run_dir / "checkpoints").is_dir():
                remove_stale_parts(run_dir / "checkpoints")
            if any((run_dir / name).exists() for name in RUN_OUTPUTS):
                log.info("%s: no checkpoint yet; starting at step 0 and appending to its logs",
                         run_dir)
        else:
            prepare_run_dir(run_dir, overwrite)
        if overwrite and resume_from is None:  # a new run: an old run's skips do not apply
            (run_dir / SKIP_FILE).unlink(missing_ok=True)
        # a checkpoint, a run dir, or a model dir
        init = find_weights(ccfg.init_from) if resume_from is None and ccfg.init_from else None
    except BaseException:
        lock.release()
        raise
    return lock, resume_from, init


def open_run(run_dir: Path, resume: str, overwrite: bool, ccfg: CheckpointConfig, rank0: bool,
             source: str) -> Start:
    """Decide on rank 0, agree on every rank, and prepare the run dir (collective). A refusal
    on rank 0 is raised on every rank (no rank is left waiting for the others)."""
    lock, resume_from, init, failure = None, None, None, None
    if rank0:
        try:
            lock, resume_from, init = claim_run_dir(run_dir, resume, overwrite, ccfg)
        except (ConfigError, CheckpointError) as e:
            failure = e
    told = collectives.from_rank0(
        (None if failure is None else (isinstance(failure, CheckpointError), str(failure)),
         None if resume_from is None else str(resume_from), None if init is None else str(init)))
    if failure is not None:
        raise failure
    if told[0] is not None:
        raise (CheckpointError if told[0][0] else ConfigError)(told[0][1])
    start = Start(lock=lock)
    try:  # the others do not re-verify the checksums
        if told[1] is not None:
            start.reader = CheckpointReader(Path(told[1]), verified=True)
        elif told[2] is not None:
            start.init = open_weights(Path(told[2]))
            if ccfg.init_optimizer and isinstance(start.init, ModelDirReader):
                raise ConfigError(f"{source}: checkpoint.init_optimizer: {start.init.path} is a "
                                  "model directory (weights only, no optimizer state)")
        collectives.barrier()
    except BaseException:
        start.release()
        raise
    return start
