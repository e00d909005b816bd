"""Rectified-flow training objective.

Convention (Goku §2.3): x_t = t*x1 + (1-t)*x0 with x0 ~ N(0, I) noise and x1 data, so t=0 is pure
noise and t=1 is data; the model predicts v = x1 - x0.

Time shift (SD3's, written for our t): with noise level s = 1 - t, a shift a > 1 maps
s -> a*s / (1 + (a-1)*s), spending more steps at high noise, where layout and motion are decided.
Larger samples need more noise to destroy the same information, hence the optional
resolution-dependent shift a = time_shift * sqrt(tokens / time_shift_ref_tokens).
"""

from __future__ import annotations

from typing import Optional

import torch

from megagoku.config.schema import FlowConfig


def shift_time(t: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    noise = 1.0 - t
    return 1.0 - shift * noise / (1.0 + (shift - 1.0) * noise)


def time_shift_for(cfg: FlowConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Shift per sample, given each sample's token count."""
    tokens = tokens.to(torch.float32)
    if cfg.time_shift_ref_tokens > 0:
        return cfg.time_shift * torch.sqrt(tokens / cfg.time_shift_ref_tokens)
    return torch.full_like(tokens, cfg.time_shift)


def sample_timesteps(cfg: FlowConfig, tokens_per_sample: torch.Tensor,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One t in (0, 1) per sample: logit-normal (or uniform), then the time shift. Drawn on the
    host, where the generator lives, whatever device the batch is on."""
    tokens_per_sample = tokens_per_sample.cpu()
    n = tokens_per_sample.numel()
    if cfg.time_sampling == "logit_normal":
        u = torch.randn(n, generator=generator) * cfg.logit_std + cfg.logit_mean
        t = torch.sigmoid(u)
    else:
        t = torch.rand(n, generator=generator)
    return shift_time(t, time_shift_for(cfg, tokens_per_sample))


def interpolate(x1: torch.Tensor, x0: torch.Tensor, t_per_token: torch.Tensor) -> torch.Tensor:
    t = t_per_token.reshape(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return t * x1 + (1.0 - t) * x0


def flow_loss(pred: torch.Tensor, target: torch.Tensor, segment: torch.Tensor,
              num_samples: int, weighting: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """MSE between predicted and target velocity over a pack.

    Returns (loss, per-sample mean squared error). `token`: every token weighs the same, so a
    sample weighs by its token count; `sample`: each sample's mean counts once.
    """
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
    sums = torch.zeros(num_samples, device=pred.device).index_add_(0, segment, per_token)
    counts = torch.bincount(segment, minlength=num_samples).to(sums.dtype)
    per_sample = sums / counts
    if weighting == "token":
        loss = per_token.mean()
    elif weighting == "sample":
        loss = per_sample.mean()
    else:
        raise ValueError(f"flow.loss_weighting: unknown weighting {weighting!r}")
    return loss, per_sample.detach()


def training_loss(velocity, x1: torch.Tensor, segment: torch.Tensor,
                  tokens_per_sample: torch.Tensor, cfg: FlowConfig,
                  generator: Optional[torch.Generator] = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One rectified-flow loss over a pack of clean latent tokens x1 (L, D).

    `velocity(x_t, t)` is the model with everything but the noisy tokens and the per-sample
    times bound. Returns (loss, per-sample error, per-sample t).
    """
    t = sample_timesteps(cfg, tokens_per_sample, generator).to(x1.device)
    x0 = torch.randn(x1.shape, generator=generator).to(x1)
    pred = velocity(interpolate(x1, x0, t[segment]), t)
    loss, per_sample = flow_loss(pred, x1 - x0, segment, tokens_per_sample.numel(),
                                 cfg.loss_weighting)
    return loss, per_sample, t
