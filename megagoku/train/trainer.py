"""The training loop (one process): packs -> text features -> rectified-flow loss -> AdamW -> EMA,
with metrics, progress and checkpoints.

Multi-process layouts (TP/SP/ZeRO), multi-stage recipes and exact resume build on this loop in
their own issues; everything here already runs through the same megatron layers.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megagoku.config import ConfigError, TrainingConfig, to_dict
from megagoku.data import PackingLoader, ShapesDataset
from megagoku.flow.rectified_flow import training_loss
from megagoku.models import TextEncoder, build_latent_space, build_model
from megagoku.models.text_encoder import encoder_width
from megagoku.parallel import ensure_single_process_groups, resolve_device
from megagoku.train.checkpoint import save_checkpoint
from megagoku.train.ema import EMA
from megagoku.train.metrics import LogWindow, MetricsLogger

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float  # mean over the last logging window


def preflight(config: TrainingConfig, source: str) -> tuple[ShapesDataset, torch.device]:
    """What the config cannot check alone (the encoder's width, the held-out captions, the
    device), checked before any work; every failure is a ConfigError naming `source`."""
    try:
        width = encoder_width(config.text.encoder)
        dataset = ShapesDataset(config.data)
        device = resolve_device(config.train.device)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None
    except RuntimeError as e:
        raise ConfigError(f"{source}: train.device: {e}") from None
    if width != config.model.text_dim:
        raise ConfigError(f"{source}: model.text_dim: {config.model.text_dim} differs from the "
                          f"width {width} of text encoder {config.text.encoder}")
    return dataset, device


def lr_lambda(cfg, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio (constant when it is 1)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


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


def train(config: TrainingConfig, run_dir: str | Path, source: str = "<config>",
          overwrite: bool = False) -> TrainResult:
    tcfg = config.train
    run_dir = Path(run_dir)
    dataset, device = preflight(config, source)
    prepare_run_dir(run_dir, overwrite)
    generator = seed_everything(tcfg.seed)
    ensure_single_process_groups()

    model = build_model(config.model).to(device)
    ema = EMA(model, tcfg.ema_decay)
    n_params = sum(p.numel() for p in model.parameters())
    latent_space = build_latent_space(config.latent)
    text_encoder = TextEncoder(config.text.encoder, config.text.max_length, device)
    loader = PackingLoader(dataset, latent_space.encode,
                           config.model.patch_size, config.data.tokens_per_step)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tcfg.betas,
                                  weight_decay=tcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(tcfg, s))
    metrics = MetricsLogger(run_dir, tcfg.steps)
    log.info("model: %.2fM parameters on %s; run dir %s", n_params / 1e6, device, run_dir)

    def save(step: int) -> Path:
        weights = model.weights()
        return save_checkpoint(run_dir, step, weights, ema.state_dict(weights),
                               to_dict(config), {"loader": loader.state_dict()})

    window = LogWindow()
    train_start = window.start
    logged_loss, step = float("nan"), 0
    model.train()
    for step in range(1, tcfg.steps + 1):
        t0 = time.perf_counter()
        batch = loader.next_pack().to(device)
        drop = torch.rand(batch.num_samples, generator=generator) < config.text.dropout
        captions = ["" if d else c for d, c in zip(drop.tolist(), batch.captions)]
        text, text_cu = text_encoder.encode(captions)
        data_seconds = time.perf_counter() - t0

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(x_t, t, batch.positions, batch.cu_seqlens, text, text_cu)

        loss, per_sample, _ = training_loss(velocity, batch.tokens, batch.segment,
                                            batch.tokens_per_sample(), config.flow, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        ema.update(model)

        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {step}")
        window.add(loss_value, batch.tokens.shape[0], batch.kinds, per_sample.tolist(),
                   data_seconds)

        elapsed_total = time.perf_counter() - train_start
        out_of_time = tcfg.max_minutes > 0 and elapsed_total > 60 * tcfg.max_minutes
        if step % tcfg.log_every == 0 or step == tcfg.steps or out_of_time:
            scalars = {**window.scalars(), "lr": lr, "grad_norm": float(grad_norm),
                       "elapsed_s": elapsed_total}
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
    metrics.close()
    return TrainResult(run_dir, checkpoint, step, logged_loss)
