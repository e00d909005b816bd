"""The training loop: packs -> text features -> rectified-flow loss -> AdamW -> EMA, with metrics,
progress and checkpoints, on one process or on any grid of `parallel` (TP x Ulysses x DP, ZeRO).

Started by torchrun, the deepspeed launcher, srun or mpirun, each process runs this same loop:
`parallel.distributed` finds its rank, `parallel.initialize_groups` builds the grid. Data-parallel
replicas read different samples; the TP and Ulysses ranks of a replica read the same packs (and
draw the same noise) and each keeps its share. Rank 0 writes metrics and checkpoints, which hold
the whole model whatever the layout.

Structure (as torchtitan's trainer): `Trainer.__init__` is the set-up, which checks the inputs,
starts the grid and builds the components (`train/components/`: model + EMA, optimizer, data,
RNG, anomaly policy, stop conditions, metrics, checkpoints; each owns its part of the
checkpoint); `train_step` is one step; `run` is the loop around it (when to log, sample,
evaluate, save and stop).

Checkpoints (`train/checkpointer.py`) are saved every `checkpoint.every` steps, at the end and
on SIGUSR1/SIGTERM/SIGINT, asynchronously; `checkpoint.resume` (or `--resume`) continues a run
exactly from its newest valid checkpoint: weights, EMA, optimizer, scheduler, loader, every RNG.
Every file the run writes goes through `train/run_writes.py` (a full disk is the save-failed
path), and rank 0 owns the run dir for the run's life (`train/run_lock.py`).
`checkpoint.init_from` starts a new run (the next stage) from another run's weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megagoku.config import ConfigError, TrainingConfig, to_dict
from megagoku.evaluation.periodic import PeriodicEvaluator
from megagoku.inference.periodic import generation_due
from megagoku.models.flops import pack_train_flops
from megagoku.ops import describe
from megagoku.optim import lr_lambda  # noqa: F401 (the schedule's formula, tested from here)
from megagoku.parallel import (collectives, current_shard, data_parallel_rank,
                               data_parallel_size, gradient_group, initialize_groups)
from megagoku.parallel.distributed import init_distributed, shutdown
from megagoku.parallel.selfcheck import SelfCheckError, self_check
from megagoku.train.anomaly import AnomalyPolicy, TrainingAnomaly
from megagoku.train.checkpoint import CheckpointReader
from megagoku.train.components.checkpointing import CheckpointSaver
from megagoku.train.components.data import TrainData
from megagoku.train.components.garbage import GarbageCollection
from megagoku.train.components.launcher import LauncherLink
from megagoku.train.components.model import TrainedModel
from megagoku.train.components.optimizer import Optimization
from megagoku.train.components.rng import RandomStreams
from megagoku.train.components.stop import StopConditions
from megagoku.train.memory_plan import check_fits
from megagoku.train.metrics import TrainMetrics
from megagoku.train.preflight import Inputs, preflight
from megagoku.train.run_dir import RUN_OUTPUTS, open_run, prepare_run_dir  # noqa: F401
from megagoku.train.run_writes import RunWrites, RunWriteError
from megagoku.train.samples import PeriodicSampler
from megagoku.train.step import mean_over, pack_total, step_loss
from megagoku.train.host_allocator import return_freed_memory
from megagoku.train.train_state import logical_sizes

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "TrainingAnomaly", "preflight", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float  # mean over the last logging window
    # done | max_minutes | signal (SIGUSR1/SIGTERM/SIGINT: requeue me) | rollback (an anomaly: resume me
    # from the newest valid checkpoint; the anomalous steps are recorded to be skipped)
    stop_reason: str = "done"


def start_grid(config: TrainingConfig, source: str) -> bool:
    """Start the process group from the launcher and build the grid. Returns whether this call
    started the group (and so should end it)."""
    started = not collectives.is_started()
    init_distributed(config.parallel.backend)
    try:
        initialize_groups(config.parallel)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return started and collectives.world_size() > 1


class Trainer:
    """One run of `config` in `run_dir`, from the `inputs` preflight checked, on the grid
    `start_grid` built. Made on every rank (collective); `run()` trains, then `close()` (also on
    failure) waits for the last save and closes the logs. The process group is the caller's to
    end (`train` does, in a `finally`)."""

    def __init__(self, config: TrainingConfig, run_dir: Path, inputs: Inputs,
                 source: str = "<config>", overwrite: bool = False,
                 resume: Optional[str] = None, garbage: Optional[GarbageCollection] = None):
        tcfg, ccfg = config.train, config.checkpoint
        self.garbage = garbage or GarbageCollection(0)  # the caller's to close
        self.config, self.run_dir = config, Path(run_dir)
        device = inputs.device
        if device.type == "cuda":  # the local rank's GPU, chosen when the group started
            device = torch.device("cuda", torch.cuda.current_device())
        if inputs.latent_space is not None:
            inputs.latent_space.to(device)
        self.device = device
        self.rank, self.world = collectives.rank(), collectives.world_size()
        rank0 = self.rank == 0
        start = open_run(self.run_dir, resume or ccfg.resume, overwrite, ccfg, rank0, source)
        self.start = start  # rank 0 owns the run dir until `close()`
        try:
            self._build_components(config, inputs, start, ccfg, tcfg, device, rank0)
        except BaseException:
            start.release()
            raise

    def _build_components(self, config, inputs, start, ccfg, tcfg, device, rank0) -> None:
        """The components, on a run dir this run owns."""
        self.reader = start.reader
        replica, self.replicas = data_parallel_rank(), data_parallel_size()

        # Built in this order: the seed, then the model (its initial weights are seeded per
        # tensor from train.seed: it draws nothing from the global RNG), the data, then the
        # optimizer, whose engine takes the model's pieces (ZeRO-1/2 partitions them).
        self.rng = RandomStreams(tcfg.seed, replica, self.replicas)
        self.trained = TrainedModel(config, device, start.reader, start.init)
        n_params = self.trained.parameter_count()
        self.data = TrainData(config, inputs, device, replica, self.replicas)
        self.optimization = Optimization(self.trained, config)
        self.link = LauncherLink(self.rank)
        try:
            self.anomalies = AnomalyPolicy(tcfg, self.run_dir, rank0, self.link.event)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # state.json holds their `state_dict()`s, in this order.
        self.stateful = [self.data, self.optimization, self.trained, self.anomalies]
        self.start_step = 0
        if start.reader is not None:
            self.start_step = self.load_checkpoint(start.reader)
        elif start.init is not None and ccfg.init_optimizer:
            self.optimization.load_moments(start.init)
        if start.init is not None:
            log.info("initialised from %s (%s)", start.init.path,
                     "weights and optimizer" if ccfg.init_optimizer else "weights")

        try:  # before any step: a broken rank or a full disk is found now, not at the first save
            self_check(self.run_dir / "checkpoints",
                       sum(logical_sizes(self.trained.model).values()), device)
        except SelfCheckError as e:
            raise ConfigError(f"{self.run_dir}: {e}") from None
        # Every write of the run dir goes through it: a full disk is the save-failed path.
        self.writes = RunWrites(ccfg.max_write_failures, deferred=True)
        self.metrics = TrainMetrics(self.run_dir, tcfg, device, self.world, self.start_step,
                                    rank0, self.writes)
        # Rank 0 samples and evaluates with the EMA weights, on copies of the model (every rank
        # takes part in gathering them: `generate`).
        self.periodic = []
        if rank0 and config.sample.every:
            self.periodic.append(PeriodicSampler(config, self.run_dir, self.data.text_encoder,
                                                 device, self.metrics.logger))
        if rank0 and config.eval.every:
            self.periodic.append(PeriodicEvaluator(config, self.run_dir, self.data.text_encoder,
                                                   device, self.metrics.logger.log))
        self.checkpoints = CheckpointSaver(
            self.run_dir, ccfg, self.rank, self.world, self.trained, self.optimization,
            self.rng, self.stateful, to_dict(config),
            {"saved_under": {"world_size": self.world, "parallel": to_dict(config.parallel)}},
            self.link.checkpoint_committed, self.writes)
        self.shard = current_shard()
        self.grad_norm = float("nan")  # the last applied step's (logged until the next one)
        self.lr = float("nan")  # the rate of the last step
        self.stop: Optional[StopConditions] = None  # the signal handlers, while `run` runs
        self.link.event("resumed" if self.reader else "training_started", step=self.start_step,
                        checkpoint=str(self.reader.path) if self.reader else None,
                        world_size=self.world)
        log.info("model: %.2fM parameters on %s x %d processes (%s); %s; run dir %s",
                 n_params / 1e6, device, self.world, config.parallel,
                 describe(config.model.kernels, device.type), self.run_dir)

    def load_checkpoint(self, reader: CheckpointReader) -> int:
        """Put a run's optimizer, scheduler, loader, anomaly window and RNG state back (its
        weights and EMA are back already, see `TrainedModel`); returns the step it had
        finished. Under another TP / Ulysses / ZeRO layout nothing changes but the float
        summation order; after a change of DP size the weights and optimizer state still load
        (stored whole), the loader is resharded and the RNGs restart from the seed."""
        self.optimization.load_moments(reader)
        for component in self.stateful:
            component.load_state_dict(reader.state)
        self.rng.load(reader)
        log.info("resumed from %s at step %d", reader.path, reader.step)
        return reader.step

    def train_step(self, step: int) -> bool:
        """One step: the next pack, the loss, the anomaly checks, the update (or none) and the
        EMA. Returns False when the run must stop here and roll back (TrainingAnomaly when it
        must stop for good)."""
        config, update = self.config, self.optimization.update
        inputs = self.data.next(self.rng.generator)
        batch = inputs.batch
        loss, per_sample, _ = step_loss(self.trained.model, batch, inputs.text, inputs.text_cu,
                                        config.flow, self.rng.generator, self.shard,
                                        config.train.precision, inputs.first_frame)
        # The pack's loss (Ulysses shares summed), averaged over the replicas: the same value
        # on every rank, so every rank takes the same decision below.
        loss_value = float(mean_over(pack_total(loss), gradient_group()))
        self.lr = update.lr  # the rate this step uses
        told_to_skip = self.anomalies.told_to_skip(step)  # a rollback's: no update from it
        anomaly = None if told_to_skip else self.anomalies.judge_loss(loss_value)
        applied = False
        if told_to_skip is None and anomaly is None:
            update.backward(loss)
            self.grad_norm = update.step()  # no update when the norm is not finite
            anomaly = self.anomalies.judge_gradient(self.grad_norm)
            applied = anomaly is None
        update.finish(applied)  # the schedule follows the step count; the EMA, applied updates
        if applied:
            self.anomalies.accept(loss_value)
            replicas = self.replicas
            self.metrics.add(loss_value, batch.tokens.shape[0] * replicas, batch.kinds,
                             pack_total(per_sample).tolist(), inputs.seconds,
                             pack_train_flops(config.model, batch.tokens_per_sample().tolist(),
                                              inputs.text_cu.diff().tolist()) * replicas)
        else:
            self.metrics.skip()
        if anomaly is not None:
            return not self.anomalies.respond(step, anomaly, update.applied_non_finite_update)
        return True

    def run(self) -> TrainResult:
        tcfg = self.config.train
        step, stop_reason = self.start_step, "done"
        self.stop = StopConditions(tcfg.max_minutes, self.device)  # until close()
        self.metrics.start()
        started = time.perf_counter()
        self.trained.model.train()
        for step in range(self.start_step + 1, tcfg.steps + 1):
            if not self.train_step(step):
                stop_reason = "rollback"
                break
            self.link.beat(step)
            self.garbage.step(step)
            elapsed = time.perf_counter() - started
            self.checkpoints.count_finished_saves()  # into self.writes
            # collective: every rank stops at the same step
            stop = self.stop.check(elapsed, self.writes.exhausted)
            if self.metrics.due(step, stopping=stop is not None):
                self.metrics.log(step, {
                    "lr": self.lr, "grad_norm": self.grad_norm, "elapsed_s": elapsed,
                    "data_skipped": self.data.skipped(),  # collective
                    "checkpoint_blocked_s": self.checkpoints.last_blocked_s,
                    "anomalies": self.anomalies.count, "write_failures": self.writes.total,
                    **self.data.decode_counts()})
            if generation_due(self.config, step):  # the same answer on every rank
                self.generate(step)
            if stop is not None and stop.reason == "write_failures":
                # The last committed checkpoint is valid; a save now would meet the same disk.
                raise RunWriteError(stop.why)
            if stop is not None:
                stop_reason = stop.reason
                log.warning("%s at step %d: saving and stopping", stop.why, step)
                break
            if self.checkpoints.due(step, tcfg.steps):
                self.checkpoints.save(step)  # the final save below covers the last step
        if stop_reason != "rollback" and (step > self.start_step or self.reader is None):
            self.checkpoints.save(step)  # (a rollback saves nothing: the state is suspect)
        checkpoint = self.checkpoints.wait()  # the final save must be committed
        if checkpoint is None and self.reader is not None and self.rank == 0:
            checkpoint = self.reader.path  # nothing left to train: the resumed checkpoint
        return TrainResult(self.run_dir, checkpoint, step, self.metrics.last_loss, stop_reason)

    def generate(self, step: int) -> None:
        """The samples and evaluations due at `step` (collective: every rank calls it). Every rank
        takes part in gathering the EMA, one whole tensor at a time; rank 0 copies each into its
        copies of the model, the others drop each at once. Then rank 0 generates on those
        copies while the others go on to the next step.

        No deadlock: the gather is the only collective here, entered by every rank at the same
        step in the same order; rank 0's generation then runs under `parallel.state.alone`
        (one-process layers over a group of rank 0 alone), so it enters no collective at all,
        and the others block in their next step's first collective until rank 0 joins it, as
        they do for a slow rank (so one generation must end within the process group's timeout,
        30 minutes: `init_distributed`). Training is untouched: copies of the model, their own
        RNGs."""
        due = [periodic for periodic in self.periodic if periodic.due(step)]  # rank 0's
        for periodic in due:
            periodic.copy()  # built on first use, from this run's model config: every tensor fits
        for name, whole in self.trained.ema_tensors():
            for periodic in due:
                periodic.take(name, whole)
            del whole  # one whole tensor at a time (dropped at once where nothing is due)
        for periodic in due:
            self.writes.attempt(
                "samples" if isinstance(periodic, PeriodicSampler) else "evaluation",
                lambda: periodic(step))

    def close(self) -> None:
        try:
            if self.stop is not None:
                self.stop.restore()
            self.data.close()
            self.checkpoints.close()
            self.metrics.close()
        finally:
            self.start.release()


def train(config: TrainingConfig, run_dir: str | Path, source: str = "<config>",
          overwrite: bool = False, resume: Optional[str] = None) -> TrainResult:
    """Train `config` in `run_dir` (every rank of a launch calls this)."""
    garbage = GarbageCollection(config.train.gc_every)  # the whole run, its set-up included
    try:
        return _train(config, Path(run_dir), source, overwrite, resume, garbage)
    finally:
        garbage.close()


def _train(config: TrainingConfig, run_dir: Path, source: str, overwrite: bool,
           resume: Optional[str], garbage: GarbageCollection) -> TrainResult:
    inputs = preflight(config, source)  # before the grid: a bad config fails at once
    if inputs.device.type == "cpu":
        return_freed_memory()  # resident memory follows what training holds (host_allocator)
    owns_group = start_grid(config, source)
    failed = True
    try:
        check_fits(config, inputs.device, source)  # before anything is allocated
        trainer = Trainer(config, run_dir, inputs, source, overwrite, resume, garbage)
        try:
            result = trainer.run()
        finally:
            trainer.close()
        failed = False
        return result
    finally:
        if owns_group:  # without the barrier after a failure: the other ranks may be gone
            shutdown(barrier=not failed)
