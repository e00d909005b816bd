"""Saving during training: what a checkpoint takes from the components and how long training
waits for it (phase 1, the snapshot; `train/checkpointer.py` persists it in the background)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from megagoku.config import CheckpointConfig
from megagoku.train.checkpointer import Checkpointer
from megagoku.train.components import Stateful
from megagoku.train.components.model import TrainedModel
from megagoku.train.components.optimizer import Optimization
from megagoku.train.components.rng import RandomStreams
from megagoku.train.run_writes import RunWrites
from megagoku.train.train_state import snapshot_tensors


class CheckpointSaver:
    """`save(step)` takes the tensors of `trained` and `optimization` (one collective snapshot),
    the JSON state of every component of `stateful` (in that order: the order of state.json's
    entries) plus `extra`, and this rank's RNGs."""

    def __init__(self, run_dir: Path, ccfg: CheckpointConfig, rank: int, world: int,
                 trained: TrainedModel, optimization: Optimization, rng: RandomStreams,
                 stateful: Sequence[Stateful], config: dict, extra: dict,
                 on_commit: Optional[Callable[[int, Path], None]] = None,
                 writes: Optional[RunWrites] = None):
        self.rank, self.world = rank, world
        self.trained, self.optimization, self.rng = trained, optimization, rng
        self.stateful, self.config, self.extra = list(stateful), config, extra
        self.every = ccfg.every
        self.checkpointer = Checkpointer(run_dir, rank, world, ccfg.async_save, ccfg.keep_last,
                                         ccfg.keep_every, ccfg.commit_timeout_s, on_commit)
        self.last_blocked_s = 0.0  # training's wait for the last save
        self.writes = writes  # told of every finished save: the save-failed path's count
        self._counted_failed = self._counted_ok = 0

    def due(self, step: int, last_step: int) -> bool:
        """A periodic save (the final one, at `last_step`, is the loop's own)."""
        return bool(self.every) and step % self.every == 0 and step != last_step

    def save(self, step: int) -> float:
        """Phase 1 of a checkpoint (collective; training waits for it); returns the seconds it
        blocked. At most one save is in flight: this one first waits for the previous."""
        start = time.perf_counter()
        self.checkpointer.wait_quietly()
        tensors = snapshot_tensors(self.trained.model, self.trained.ema,
                                   self.optimization.optimizer, self.rank, self.world,
                                   self.checkpointer.to_host)
        state: dict = {}
        for component in self.stateful:  # collective (the loader's gather): every rank
            state.update(component.state_dict())
        self.checkpointer.persist(step, tensors, self.rng.rank_state(), self.config,
                                  {**state, **self.extra} if self.rank == 0 else None)
        blocked = time.perf_counter() - start
        self.checkpointer.stats.blocked_s.append(blocked)
        self.last_blocked_s = blocked
        return blocked

    def count_finished_saves(self) -> None:
        """Tell `writes` of the saves that finished since the last call, on this rank (the
        checkpointer logged each failure already). Safe while a save runs: its failure is
        recorded before its duration, so `ok` only grows once a save succeeds."""
        if self.writes is None:
            return
        stats = self.checkpointer.stats
        failed = len(stats.failed)
        ok = len(stats.persist_s) - failed
        for message in stats.failed[self._counted_failed:failed]:
            self.writes.failed("checkpoint", message, warn=False)
        if ok > self._counted_ok:
            self.writes.succeeded("checkpoint")
        self._counted_failed, self._counted_ok = failed, max(ok, self._counted_ok)

    def wait(self) -> Optional[Path]:
        """The final save committed (CheckpointError if it failed); its path on rank 0."""
        return self.checkpointer.wait()

    def close(self) -> None:
        self.checkpointer.wait_quietly()
