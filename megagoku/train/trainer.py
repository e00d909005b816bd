"""The training loop: packs -> text features -> rectified-flow loss -> AdamW -> EMA, with metrics,
progress and checkpoints, on one process or on any grid of `parallel` (TP x Ulysses x DP, ZeRO).

Started by torchrun, the deepspeed launcher, srun or mpirun, each process runs this same loop:
`parallel.distributed` finds its rank, `parallel.initialize_groups` builds the grid. Data-parallel
replicas read different samples; the TP and Ulysses ranks of a replica read the same packs (and
draw the same noise) and each keeps its share. Rank 0 writes metrics and checkpoints, which hold
the whole model whatever the layout.

Multi-stage recipes and exact resume build on this loop in their own issues.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
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
from megagoku.models import TextEncoder, build_latent_space, build_model
from megagoku.models.latent import LatentSpace
from megagoku.models.text_encoder import encoder_width
from megagoku.ops import KernelsUnavailable, describe, use_fused
from megagoku.parallel import (current_shard, data_parallel_rank, data_parallel_size,
                               gradient_group, initialize_groups, resolve_device,
                               tensor_parallel_size)
from megagoku.parallel.activation_checkpoint import apply_activation_checkpointing
from megagoku.parallel.distributed import init_distributed, shutdown
from megagoku.parallel.engine import TrainEngine
from megagoku.parallel.weights import full_weights, is_tp_split
from megagoku.train.checkpoint import save_checkpoint
from megagoku.train.ema import EMA
from megagoku.train.metrics import LogWindow, MetricsLogger
from megagoku.train.step import mean_over, pack_total, step_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float  # mean over the last logging window


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
    """A new run never mixes with an old one's metrics or checkpoints (exact resume arrives with
    the training-system issue): refuse a used run dir, or clear our own outputs from it."""
    used = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if used and not overwrite:
        raise ConfigError(f"{run_dir}: run dir already holds {', '.join(used)}; pass --overwrite "
                          "to replace them or choose another --run-dir")
    for name in used:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


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


def train(config: TrainingConfig, run_dir: str | Path, source: str = "<config>",
          overwrite: bool = False) -> TrainResult:
    tcfg = config.train
    run_dir = Path(run_dir)
    inputs = preflight(config, source)
    dataset, device = inputs.dataset, inputs.device
    owns_group = start_grid(config, source)
    if device.type == "cuda":  # the local rank's GPU, chosen when the group started
        device = torch.device("cuda", torch.cuda.current_device())
    if inputs.latent_space is not None:
        inputs.latent_space.to(device)
    rank0 = dist.get_rank() == 0
    if rank0:
        prepare_run_dir(run_dir, overwrite)
    dist.barrier()
    replica, replicas = data_parallel_rank(), data_parallel_size()
    generator = seed_everything(tcfg.seed, replica)

    model = build_model(config.model).to(device)
    ema = EMA(model, tcfg.ema_decay)  # before ZeRO-3 partitions the parameters
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
    shard = current_shard()
    metrics = MetricsLogger(run_dir, tcfg.steps) if rank0 else None
    log.info("model: %.2fM parameters on %s x %d processes (%s); %s; run dir %s",
             n_params / 1e6, device, dist.get_world_size(), config.parallel,
             describe(config.model.kernels, device.type), run_dir)

    def save(step: int) -> Path | None:
        weights = full_weights(model)  # collective: every rank takes part
        averaged = ema.state_dict(weights, model)
        loader_states = gather_loader_states(loader, replicas)  # collective
        path = None
        if rank0:
            path = save_checkpoint(run_dir, step, weights, averaged, to_dict(config),
                                   {"loader": loader_states})
        dist.barrier()
        return path

    window = LogWindow()
    train_start = window.start
    logged_loss, step = float("nan"), 0
    model.train()
    for step in range(1, tcfg.steps + 1):
        t0 = time.perf_counter()
        batch = loader.next_pack().to(device)
        drop = torch.rand(batch.num_samples, generator=generator) < config.text.dropout
        text, text_cu = caption_features(text_encoder, batch, drop.tolist())
        data_seconds = time.perf_counter() - t0

        loss, per_sample, _ = step_loss(model, batch, text, text_cu, config.flow, generator,
                                        shard, tcfg.precision)
        engine.backward(loss)
        lr = engine.lr  # the rate this step uses
        grad_norm = engine.step()
        scheduler.step()
        ema.update(model)

        # The pack's loss (Ulysses shares summed), averaged over the replicas.
        loss_value = float(mean_over(pack_total(loss), gradient_group()))
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {step}")
        window.add(loss_value, batch.tokens.shape[0] * replicas, batch.kinds,
                   pack_total(per_sample).tolist(), data_seconds)

        elapsed_total = time.perf_counter() - train_start
        out_of_time = tcfg.max_minutes > 0 and elapsed_total > 60 * tcfg.max_minutes
        if dist.get_world_size() > 1:  # every rank stops at the same step
            flag = torch.tensor([float(out_of_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % tcfg.log_every == 0 or step == tcfg.steps or out_of_time:
            scalars = {**window.scalars(), "lr": lr, "grad_norm": grad_norm,
                       "elapsed_s": elapsed_total,
                       "data_skipped": skipped_samples(loader, device),
                       **decode_counts(dataset)}
            if metrics is not None:
                metrics.log(step, scalars)
                metrics.progress(step, scalars["loss"], scalars["steps_per_s"],
                                 scalars["tokens_per_s"])
            logged_loss = scalars["loss"]
            window = LogWindow()
        if tcfg.save_every and step % tcfg.save_every == 0 and step != tcfg.steps \
                and not out_of_time:  # the final save below covers those
            save(step)
        if out_of_time:
            log.warning("train.max_minutes=%s reached at step %d: stopping", tcfg.max_minutes, step)
            break
    checkpoint = save(step)
    if metrics is not None:
        metrics.close()
    if owns_group:
        shutdown()
    return TrainResult(run_dir, checkpoint, step, logged_loss)
