"""Rectified-flow training objective.

Convention (Goku §2.3): x_t = t*x1 + (1-t)*x0 with x0 ~ N(0, I) noise and x1 data, so t=0 is pure
noise and t=1 is data; the model predicts v = x1 - x0.

Time shift (SD3's, written for our t): with noise level s = 1 - t, a shift a > 1 maps
s -> a*s / (1 + (a-1)*s), spending more steps at high noise, where layout and motion are decided.
Larger samples need more noise to destroy the same information, hence the optional
resolution-dependent shift a = time_shift * sqrt(tokens / time_shift_ref_tokens).
"""

from __future__ import annotations

from typing import Callable, Optional

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


def loss_weights(segment: torch.Tensor, tokens_per_sample: torch.Tensor,
                 weighting: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights of the pack's loss (they sum to 1), and 1 / (the token's sample size).

    `token`: every token weighs the same, so a sample weighs by its token count; `sample`: each
    sample's mean counts once."""
    counts = tokens_per_sample.to(segment.device, torch.float32)
    inv_count = (1.0 / counts)[segment]
    if weighting == "token":
        weights = torch.full_like(inv_count, 1.0 / segment.numel())
    elif weighting == "sample":
        weights = inv_count / counts.numel()
    else:
        raise ValueError(f"flow.loss_weighting: unknown weighting {weighting!r}")
    return weights, inv_count


def weighted_flow_loss(pred: torch.Tensor, target: torch.Tensor, segment: torch.Tensor,
                       weights: torch.Tensor, inv_count: torch.Tensor,
                       num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i w_i * |pred_i - target_i|^2 / D, and each sample's mean squared error. Rows with
    weight 0 and inv_count 0 (sequence-parallel padding) count for nothing; over a slice of the
    pack both results are that slice's share, and summing the slices gives the pack's."""
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
    loss = (per_token * weights).sum()
    per_sample = torch.zeros(num_samples, device=pred.device).index_add_(
        0, segment, per_token.detach() * inv_count)
    return loss, per_sample


def flow_loss(pred: torch.Tensor, target: torch.Tensor, segment: torch.Tensor,
              num_samples: int, weighting: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """MSE between predicted and target velocity over a whole pack: (loss, per-sample MSE)."""
    counts = torch.bincount(segment, minlength=num_samples)
    weights, inv_count = loss_weights(segment, counts, weighting)
    return weighted_flow_loss(pred, target, segment, weights, inv_count, num_samples)


def training_loss(velocity, x1: torch.Tensor, segment: torch.Tensor,
                  tokens_per_sample: torch.Tensor, cfg: FlowConfig,
                  generator: Optional[torch.Generator] = None,
                  local: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One rectified-flow loss over a pack of clean latent tokens x1 (L, D).

    `velocity(x_t, t)` is the model with everything but the noisy tokens and the per-sample
    times bound. Returns (loss, per-sample error, per-sample t).

    `local` (sequence parallelism): maps a packed (L, ...) tensor to this rank's rows, zeros past
    the pack's end. Noise and times are drawn for the whole pack (the same on every rank of the
    pack), the model sees only this rank's rows, and the loss and per-sample errors returned are
    this rank's shares: their sum over the ranks is the pack's.
    """
    t = sample_timesteps(cfg, tokens_per_sample, generator).to(x1.device)
    x0 = torch.randn(x1.shape, generator=generator).to(x1)
    x_t, target = interpolate(x1, x0, t[segment]), x1 - x0
    weights, inv_count = loss_weights(segment, tokens_per_sample, cfg.loss_weighting)
    if local is not None:
        x_t, target, weights, inv_count, segment = (
            local(x) for x in (x_t, target, weights, inv_count, segment))
    pred = velocity(x_t, t)
    loss, per_sample = weighted_flow_loss(pred, target, segment, weights, inv_count,
                                          tokens_per_sample.numel())
    return loss, per_sample, t
