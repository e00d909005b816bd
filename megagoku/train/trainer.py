"""The training loop: packs -> text features -> rectified-flow loss -> AdamW -> EMA, with metrics,
progress and checkpoints, on one process or on any grid of `parallel` (TP x Ulysses x DP, ZeRO).

Started by torchrun, the deepspeed launcher, srun or mpirun, each process runs this same loop:
`parallel.distributed` finds its rank, `parallel.initialize_groups` builds the grid. Data-parallel
replicas read different samples; the TP and Ulysses ranks of a replica read the same packs (and
draw the same noise) and each keeps its share. Rank 0 writes metrics and checkpoints, which hold
the whole model whatever the layout.

Checkpoints (`train/checkpointer.py`) are saved every `checkpoint.every` steps, at the end and
on SIGUSR1/SIGTERM, asynchronously; `checkpoint.resume` (or `--resume`) continues a run exactly
from its newest valid checkpoint: weights, EMA, optimizer, scheduler, loader, every RNG.
`checkpoint.init_from` starts a new run (the next stage) from another run's weights.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megagoku.config import ConfigError, TrainingConfig, to_dict
from megagoku.data import ManifestError, PackingLoader, ShapesDataset
from megagoku.data.cache import CachedDataset, check_cache_matches
from megagoku.data.files import ManifestDataset
from megagoku.data.packing import first_frame_tokens, reshard_loader_states
from megagoku.evaluation.periodic import PeriodicEvaluator
from megagoku.launch.events import EventLog
from megagoku.launch.heartbeat import Heartbeat
from megagoku.models import TextEncoder, build_latent_space, build_model
from megagoku.models.flops import pack_train_flops
from megagoku.models.latent import LatentSpace
from megagoku.models.text_encoder import encoder_width
from megagoku.ops import KernelsUnavailable, describe, use_fused
from megagoku.parallel import (current_shard, data_parallel_rank, data_parallel_size,
                               gradient_group, initialize_groups, resolve_device,
                               tensor_parallel_size)
from megagoku.parallel.activation_checkpoint import apply_activation_checkpointing
from megagoku.parallel.distributed import init_distributed, shutdown
from megagoku.parallel.engine import TrainEngine
from megagoku.parallel.selfcheck import SelfCheckError, self_check
from megagoku.parallel.weights import is_tp_split
from megagoku.train.checkpoint import (CheckpointReader, ModelDirReader, find_checkpoint,
                                       find_weights, open_weights,
                                       remove_stale_parts)
from megagoku.train.anomaly import SKIP_FILE, AnomalyDetector, add_skip_steps, read_skip_steps
from megagoku.train.checkpointer import Checkpointer
from megagoku.train.ema import EMA
from megagoku.train.train_state import (logical_sizes, optimizer_meta, replica_rng,
                                        restore_optimizer, restore_weights, rng_state,
                                        set_rng_state, snapshot_tensors)
from megagoku.train.metrics import LogWindow, MetricsLogger
from megagoku.train.samples import PeriodicSampler
from megagoku.train.step import mean_over, pack_total, step_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float  # mean over the last logging window
    # done | max_minutes | signal (SIGUSR1/SIGTERM: requeue me) | rollback (an anomaly: resume me
    # from the newest valid checkpoint; the anomalous steps are recorded to be skipped)
    stop_reason: str = "done"


class TrainingAnomaly(RuntimeError):
    """A loss anomaly the run will not go past (response stop, or too many anomalies)."""


# Dense bf16 peak per GPU in TFLOP/s (the vendors' datasheets), by name: the default MFU base.
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(tcfg, device: torch.device) -> float:
    """The per-device peak MFU is measured against: configured, else a known GPU under bf16."""
    if tcfg.peak_tflops > 0:
        return tcfg.peak_tflops
    if device.type == "cuda" and tcfg.precision in ("auto", "bf16"):
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), 0.0)
    return 0.0


def build_dataset(config: TrainingConfig, device: str = "cpu"
                  ) -> ShapesDataset | ManifestDataset | CachedDataset:
    """The sample source of `data.kind`; raises ValueError (or ManifestError) naming the field."""
    if config.data.kind == "shapes":
        return ShapesDataset(config.data)
    if config.data.kind == "cache":
        dataset = CachedDataset(config.data)
        check_cache_matches(dataset.cache, config)
        return dataset
    dataset = ManifestDataset(config.data, device)
    if config.model.patch_size[0] > 1 and any(r.kind == "image" for r in dataset.records):
        raise ValueError(f"model.patch_size: {list(config.model.patch_size)} patches "
                         f"{config.model.patch_size[0]} frames at once, but {config.data.manifest} "
                         "holds images (1 frame)")
    return dataset


@dataclass
class Inputs:
    """What preflight built: the sample source, the device, and the latent space (on the CPU
    until the rank knows its GPU; None when training from the cache, whose samples carry their
    latents)."""

    dataset: ShapesDataset | ManifestDataset | CachedDataset
    device: torch.device
    latent_space: Optional[LatentSpace]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.latent_space is None:
            raise RuntimeError("data.kind: cache, but a sample came without its latent")
        return self.latent_space.encode(pixels)


def preflight(config: TrainingConfig, source: str) -> Inputs:
    """What the config cannot check alone (the encoder's width, the data, the latent space, the
    device), checked and built before any work; every failure is a ConfigError naming
    `source`."""
    try:
        device = resolve_device(config.train.device)
    except RuntimeError as e:
        raise ConfigError(f"{source}: train.device: {e}") from None
    try:
        width = encoder_width(config.text.encoder)
        dataset = build_dataset(config, device.type)
        latent_space = None if config.data.kind == "cache" else build_latent_space(config.latent)
    except ManifestError as e:
        raise ConfigError(f"{source}: data.manifest: {e}") from None
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None
    if config.train.precision == "bf16" and device.type != "cuda":
        raise ConfigError(f"{source}: train.precision: bf16 needs a GPU (megatron's layers run "
                          "their backward under CUDA autocast only); use fp32 or auto on the CPU")
    if width != config.model.text_dim:
        raise ConfigError(f"{source}: model.text_dim: {config.model.text_dim} differs from the "
                          f"width {width} of text encoder {config.text.encoder}")
    try:
        use_fused(config.model.kernels, device.type)
    except KernelsUnavailable as e:
        raise ConfigError(f"{source}: model.kernels: {e}") from None
    return Inputs(dataset, device, latent_space)


def skipped_samples(loader: PackingLoader, device: torch.device) -> float:
    """Unreadable samples skipped so far, over all data-parallel replicas (collective; on the
    training device, which NCCL needs)."""
    count = torch.tensor([float(loader.skipped)], device=device)
    if dist.get_world_size() > 1:
        dist.all_reduce(count)
        count /= dist.get_world_size() // data_parallel_size()  # TP/SP ranks share the stream
    return float(count.item())


def caption_features(encoder: TextEncoder, batch, dropped: list[bool]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed caption features and their cu_seqlens; a dropped caption (for CFG) is the empty
    one. Cached features are used when the batch has them."""
    if batch.texts is None:
        return encoder.encode(["" if d else c for d, c in zip(dropped, batch.captions)])
    empty = encoder.encode([""])[0] if any(dropped) else None
    feats = [empty if d else t.to(encoder.device) for d, t in zip(dropped, batch.texts)]
    lengths = torch.tensor([0] + [f.shape[0] for f in feats])
    return torch.cat(feats), lengths.cumsum(0).to(torch.int32).to(encoder.device)


def gather_loader_states(loader: PackingLoader, replicas: int) -> dict:
    """Every data-parallel replica's loader state, for the checkpoint (collective: the TP and
    Ulysses ranks of a replica hold the same state; one per replica is kept)."""
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, (loader.replica[0], loader.state_dict()))
    by_replica = dict(states)
    return {"replicas": replicas, "states": [by_replica[r] for r in range(replicas)]}


def decode_counts(dataset) -> dict[str, int]:
    """This rank's files decoded per backend and skipped per reason (`data/decoded_dali`,
    `data/skipped_too_short`, ...), for the metrics; nothing for data that is not decoded."""
    reader = getattr(dataset, "reader", None)
    return reader.stats.as_metrics() if reader is not None else {}


def lr_lambda(cfg, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio (constant when it is 1)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def seed_everything(seed: int, replica: int = 0) -> torch.Generator:
    """Every rank builds the same model from `seed`; the returned generator (noise, times,
    caption dropout) is shared by the ranks of one data-parallel replica and differs between
    replicas."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1 + 1000003 * replica)


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
    box = [None if path is None else str(path)]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return None if box[0] is None else Path(box[0])


def start_grid(config: TrainingConfig, source: str) -> bool:
    """Start the process group from the launcher and build the grid. Returns whether this call
    started the group (and so should end it)."""
    started = not dist.is_initialized()
    init_distributed(config.parallel.backend)
    try:
        initialize_groups(config.parallel)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return started and dist.get_world_size() > 1


class StopSignals:
    """SIGUSR1 / SIGTERM (a Slurm preemption, a launcher stopping the job) ask for a checkpoint
    and a clean exit at the end of the current step, not an abrupt death."""

    NAMES = ("SIGUSR1", "SIGTERM")

    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number, frame) -> None:
        self.received = signal.Signals(number).name
        log.warning("%s received: checkpointing at the end of this step, then exiting",
                    self.received)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank, on every rank (so that all stop at the same step)."""
    if dist.get_world_size() == 1:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def train(config: TrainingConfig, run_dir: str | Path, source: str = "<config>",
          overwrite: bool = False, resume: Optional[str] = None) -> TrainResult:
    tcfg, ccfg = config.train, config.checkpoint
    resume = resume or ccfg.resume
    run_dir = Path(run_dir)
    inputs = preflight(config, source)
    dataset, device = inputs.dataset, inputs.device
    owns_group = start_grid(config, source)
    if device.type == "cuda":  # the local rank's GPU, chosen when the group started
        device = torch.device("cuda", torch.cuda.current_device())
    if inputs.latent_space is not None:
        inputs.latent_space.to(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    rank0 = rank == 0
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
    reader = CheckpointReader(resume_from, verified=True) if resume_from else None
    init = None
    if reader is None and ccfg.init_from:  # a checkpoint, a run dir, or a converted model dir
        init = open_weights(agree_on_path(find_weights(ccfg.init_from) if rank0 else None))
        if ccfg.init_optimizer and isinstance(init, ModelDirReader):
            raise ConfigError(f"{source}: checkpoint.init_optimizer: {init.path} is a model "
                              "directory (weights only, no optimizer state)")
    dist.barrier()
    replica, replicas = data_parallel_rank(), data_parallel_size()
    generator = seed_everything(tcfg.seed, replica)

    model = build_model(config.model).to(device)
    ema = EMA(model, tcfg.ema_decay)  # before ZeRO-3 partitions the parameters
    if reader is not None or init is not None:  # before DeepSpeed builds its partitions
        restore_weights(model, ema, reader or init,
                        fresh=model.new_input_weights() if reader is None else ())
    if init is not None:
        ema = EMA(model, tcfg.ema_decay)  # a new stage averages from its initial weights
    apply_activation_checkpointing(model.blocks, config.parallel.activation_checkpointing,
                                   config.parallel.checkpoint_every)
    n_params = sum(p.numel() * (tensor_parallel_size() if is_tp_split(p) else 1)
                   for p in model.parameters())
    text_encoder = TextEncoder(config.text.encoder, config.text.max_length, device)
    loader = PackingLoader(dataset, inputs.encode, config.model.patch_size,
                           config.data.tokens_per_step, replica=(replica, replicas),
                           window=config.data.pack_window)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tcfg.betas,
                                  weight_decay=tcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(tcfg, s))
    engine = TrainEngine(model, optimizer, config.parallel.zero_stage, tcfg.grad_clip)
    start_step = 0
    if reader is not None:
        start_step = continue_run(reader, model, optimizer, scheduler, loader, generator,
                                  replica, replicas)
    elif init is not None and ccfg.init_optimizer:
        restore_optimizer(model, optimizer, init)
    if init is not None:
        log.info("initialised from %s (%s)", init.path,
                 "weights and optimizer" if ccfg.init_optimizer else "weights")
    detector = AnomalyDetector(tcfg.spike_factor, tcfg.spike_window)
    if reader is not None:
        detector.load_state_dict(reader.state.get("anomaly", {}))
    try:
        skip_steps = read_skip_steps(run_dir)  # every rank reads it: all skip the same steps
    except ValueError as e:
        raise ConfigError(str(e)) from None
    anomalies = len(skip_steps)
    peak = peak_tflops(tcfg, device)
    shard = current_shard()
    try:  # before any step: a broken rank or a full disk is found now, not at the first save
        self_check(run_dir / "checkpoints", sum(logical_sizes(model).values()), device)
    except SelfCheckError as e:
        raise ConfigError(f"{run_dir}: {e}") from None
    # Set by `megagoku launch`: progress beats for hang detection, events for its log.
    heartbeat = Heartbeat.from_env(rank)
    events = EventLog.from_env() if rank0 else None
    metrics = MetricsLogger(run_dir, tcfg.steps, start_step=start_step) if rank0 else None
    sampler = PeriodicSampler(config, run_dir, text_encoder, device, metrics.tensorboard) \
        if rank0 and config.sample.every else None
    evaluator = PeriodicEvaluator(config, run_dir, text_encoder, device, metrics.log) \
        if rank0 and config.eval.every else None
    on_commit = None if events is None else \
        (lambda step, path: events.log("checkpoint_committed", step=step, path=str(path)))
    checkpointer = Checkpointer(run_dir, rank, world, ccfg.async_save, ccfg.keep_last,
                                ccfg.keep_every, ccfg.commit_timeout_s, on_commit)
    if events is not None:
        events.log("resumed" if reader else "training_started", step=start_step,
                   checkpoint=str(reader.path) if reader else None, world_size=world)
    log.info("model: %.2fM parameters on %s x %d processes (%s); %s; run dir %s",
             n_params / 1e6, device, world, config.parallel,
             describe(config.model.kernels, device.type), run_dir)

    def save(step: int) -> float:
        """Phase 1 of a checkpoint (training waits for it); returns the seconds it blocked."""
        start = time.perf_counter()
        checkpointer.wait_quietly()  # at most one save in flight
        tensors = snapshot_tensors(model, ema, optimizer, rank, world, checkpointer.to_host)
        loader_states = gather_loader_states(loader, replicas)  # collective
        state = None
        if rank0:
            state = {"loader": loader_states, "scheduler": scheduler.state_dict(),
                     "optimizer": optimizer_meta(optimizer), "ema_updates": ema.updates,
                     "anomaly": detector.state_dict(),
                     "saved_under": {"world_size": world, "parallel": to_dict(config.parallel)}}
        checkpointer.persist(step, tensors, rng_state(generator, replica, replicas), to_dict(config), state)
        blocked = time.perf_counter() - start
        checkpointer.stats.blocked_s.append(blocked)
        return blocked

    signals = StopSignals()
    window = LogWindow()
    train_start = window.start
    logged_loss, step, stop_reason, blocked = float("nan"), start_step, "done", 0.0
    grad_norm = float("nan")
    model.train()
    try:
        for step in range(start_step + 1, tcfg.steps + 1):
            t0 = time.perf_counter()
            batch = loader.next_pack().to(device)
            drop = torch.rand(batch.num_samples, generator=generator) < config.text.dropout
            text, text_cu = caption_features(text_encoder, batch, drop.tolist())
            first_frame = None
            if config.model.image_condition:  # I2V: each video's first frame, sometimes dropped
                keep = torch.rand(batch.num_samples, generator=generator) >= tcfg.image_dropout
                first_frame = first_frame_tokens(batch, config.model.patch_size,
                                                 config.model.in_channels, keep.tolist())
            data_seconds = time.perf_counter() - t0

            loss, per_sample, _ = step_loss(model, batch, text, text_cu, config.flow, generator,
                                            shard, tcfg.precision, first_frame)
            # The pack's loss (Ulysses shares summed), averaged over the replicas: the same
            # value on every rank, so every rank takes the same decision below.
            loss_value = float(mean_over(pack_total(loss), gradient_group()))
            lr = engine.lr  # the rate this step uses
            skipped = skip_steps.get(step)  # recorded by a rollback: no update from this pack
            anomaly = None if skipped else detector.judge(loss_value)
            if skipped is None and anomaly is None:
                engine.backward(loss)
                grad_norm = engine.step()  # no update when the norm is not finite
                anomaly = detector.judge_gradient(grad_norm)
            scheduler.step()  # the schedule follows the step count, updated or not
            if skipped is None and anomaly is None:
                detector.accept(loss_value)
                ema.update(model)
                window.add(loss_value, batch.tokens.shape[0] * replicas, batch.kinds,
                           pack_total(per_sample).tolist(), data_seconds,
                           pack_train_flops(config.model, batch.tokens_per_sample().tolist(),
                                            text_cu.diff().tolist()) * replicas)
            else:
                window.skipped += 1
            if anomaly is not None:
                anomalies += 1
                response = tcfg.anomaly_response
                if response == "skip" and engine.applied_non_finite_update:
                    response = "rollback"  # the update is in the weights already: undo it
                log.warning("step %d: %s; response: %s", step, anomaly, response)
                if events is not None:
                    events.log("anomaly", step=step, why=anomaly, response=response)
                if response == "stop" or anomalies > tcfg.max_anomalies:
                    why = "train.anomaly_response=stop" if response == "stop" else \
                        f"{anomalies} anomalous steps, more than train.max_anomalies=" \
                        f"{tcfg.max_anomalies}"
                    raise TrainingAnomaly(f"{run_dir}: step {step}: {anomaly} ({why})")
                if response == "rollback":
                    if rank0:
                        add_skip_steps(run_dir, range(max(1, step - tcfg.rollback_steps + 1),
                                                      step + 1), anomaly)
                    stop_reason = "rollback"
                    break

            if heartbeat is not None:
                heartbeat.beat(step)
            elapsed_total = time.perf_counter() - train_start
            out_of_time, signalled = any_rank(
                [tcfg.max_minutes > 0 and elapsed_total > 60 * tcfg.max_minutes,
                 signals.received is not None], device)
            if step % tcfg.log_every == 0 or step == tcfg.steps or out_of_time or signalled:
                scalars = {**window.scalars(world, peak), "lr": lr, "grad_norm": grad_norm,
                           "elapsed_s": elapsed_total,
                           "data_skipped": skipped_samples(loader, device),
                           "checkpoint_blocked_s": blocked, "anomalies": anomalies,
                           **decode_counts(dataset)}
                if metrics is not None:
                    metrics.log(step, scalars)
                    metrics.progress(step, scalars["loss"], scalars["steps_per_s"],
                                     scalars["tokens_per_s"])
                logged_loss = scalars["loss"]
                window = LogWindow()
            if sampler is not None and sampler.due(step):
                sampler.sample(step, model, ema)  # a copy of the model: training is untouched
            if evaluator is not None and evaluator.due(step):  # also a copy of the model
                evaluator.evaluate(step, ema.state_dict(model.weights()))
            if signalled or out_of_time:
                stop_reason = "signal" if signalled else "max_minutes"
                why = (signals.received or "a stop signal on another rank") if signalled else \
                    f"train.max_minutes={tcfg.max_minutes} reached"
                log.warning("%s at step %d: saving and stopping", why, step)
                break
            if ccfg.every and step % ccfg.every == 0 and step != tcfg.steps:
                blocked = save(step)  # the final save below covers the last step
        if stop_reason != "rollback" and (step > start_step or reader is None):
            save(step)  # (a rollback saves nothing: the state after an anomaly is suspect)
        checkpoint = checkpointer.wait()  # the final save must be committed (CheckpointError)
        if checkpoint is None and reader is not None and rank0:
            checkpoint = reader.path  # nothing left to train: the resumed checkpoint is the end
    finally:
        signals.restore()
        checkpointer.wait_quietly()
        if metrics is not None:
            metrics.close()
    if owns_group:
        shutdown()
    return TrainResult(run_dir, checkpoint, step, logged_loss, stop_reason)


def continue_run(reader: CheckpointReader, model, optimizer, scheduler, loader: PackingLoader,
                 generator: torch.Generator, replica: int, replicas: int) -> int:
    """Put a run's optimizer, scheduler, loader and RNG state back (its weights and EMA are back
    already); returns the step it had finished. Under another TP / Ulysses / ZeRO layout nothing
    changes but the float summation order; after a change of DP size the weights and optimizer
    state still load (stored whole), the loader is resharded (`reshard_loader_states` says what
    is kept) and the RNGs restart from the seed."""
    restore_optimizer(model, optimizer, reader)
    scheduler.load_state_dict(reader.state["scheduler"])
    saved = reader.state["loader"]
    states = saved["states"] if saved["replicas"] == replicas else \
        reshard_loader_states(saved["states"], replicas)
    loader.load_state_dict(states[replica])
    rng = replica_rng(reader, replica, replicas)
    if rng is not None:
        set_rng_state(rng, generator)
    else:
        log.warning("%s was saved by another number of data-parallel replicas than this run's "
                    "%d: the weights, optimizer and data position carry over, the random streams "
                    "restart from the seed", reader.path, replicas)
    log.info("resumed from %s at step %d", reader.path, reader.step)
    return reader.step
