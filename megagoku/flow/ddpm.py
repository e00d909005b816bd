"""DDPM (Ho et al. 2020): the baseline objective of the rectified-flow ablation (Goku Table 2).

Convention: this file follows the DDPM papers, so **x0 is data** and the index t counts noise
steps, 0 (almost clean) .. T-1 (almost pure noise) -- the opposite of `rectified_flow.py`, where
x0 is noise and t=1 is data. Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with
abar_t = prod_{s<=t} (1 - beta_s); the model predicts eps and is trained with the MSE to the true
eps (the "simple" loss), uniform t.

Schedules: `linear` (DDPM's 1e-4 .. 0.02 over T = 1000) and `cosine` (Nichol & Dhariwal 2021,
abar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), betas capped at 0.999).

Samplers, both with classifier-free guidance done by the caller's eps function:
- `ddpm_sample`: the standard ancestral sampler, on a respaced subsequence of the T training steps
  when steps < T (Nichol & Dhariwal's respacing: the same abar at the kept steps, betas recomputed
  between them), with the posterior variance beta~ ("fixed small") and x0 clipped to [-1, 1] when
  asked (pixel-space data).
- `ddim_sample`: DDIM (Song et al. 2021), deterministic for eta = 0.

The model sees the time as `model_time(t) = t / T` in [0, 1): the GokuTransformer's timestep
embedder multiplies by 1000, so at T = 1000 it embeds the integer step exactly as DDPM/DiT do.
Like `rectified_flow.py`, the loss works on packed tokens (one t per sample, `segment` maps tokens
to samples) and takes the model as a callable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megagoku.flow.rectified_flow import loss_weights, weighted_flow_loss

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DDPMSchedule:
    """betas (T,) in float64 and what follows from them."""

    betas: torch.Tensor

    def __post_init__(self) -> None:
        self.betas = self.betas.to(torch.float64)
        if self.betas.dim() != 1 or len(self.betas) < 1:
            raise ValueError("a DDPM schedule needs at least one beta")
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError("every DDPM beta must lie in (0, 1)")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        # abar_{t-1}, with abar_{-1} = 1 (before the first step the data is clean).
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @classmethod
    def linear(cls, steps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> "DDPMSchedule":
        """DDPM's schedule; the end points are scaled by 1000 / steps so that any T gives the
        same noise at the last step (as the improved-DDPM code does)."""
        scale = 1000.0 / steps
        return cls(torch.linspace(beta_start * scale, beta_end * scale, steps,
                                  dtype=torch.float64))

    @classmethod
    def cosine(cls, steps: int = 1000, s: float = 0.008, max_beta: float = 0.999
               ) -> "DDPMSchedule":
        def abar(t: float) -> float:
            return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    def respaced(self, steps: int) -> tuple[torch.Tensor, "DDPMSchedule"]:
        """(the kept training steps, increasing; the schedule between them): `steps` evenly
        spaced indices from 0 to T-1, and betas so that the new abar equal the old at them."""
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"sampling steps must be in [1, {self.num_steps}], got {steps}")
        kept = torch.linspace(0, self.num_steps - 1, steps, dtype=torch.float64).round().long()
        kept = torch.unique(kept)
        abar = self.alphas_cumprod[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return kept, DDPMSchedule(1.0 - abar / prev)


def make_schedule(kind: str, steps: int = 1000) -> DDPMSchedule:
    if kind == "linear":
        return DDPMSchedule.linear(steps)
    if kind == "cosine":
        return DDPMSchedule.cosine(steps)
    raise ValueError(f"unknown DDPM schedule {kind!r} (linear or cosine)")


def model_time(t: torch.Tensor, num_steps: int) -> torch.Tensor:
    """The model's timestep input for DDPM step indices t: t / T."""
    return t.to(torch.float32) / num_steps


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row coefficients (N,) broadcast over the trailing dims of `like`, in its dtype."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype).to(like.device)


def q_sample(x0: torch.Tensor, t_per_row: torch.Tensor, noise: torch.Tensor,
             schedule: DDPMSchedule) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, one step index per row of x0."""
    abar = schedule.alphas_cumprod[t_per_row.cpu()]
    return _rows(abar.sqrt(), x0) * x0 + _rows((1 - abar).sqrt(), x0) * noise


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, t_per_row: torch.Tensor,
                schedule: DDPMSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6-7); the variance per row."""
    t = t_per_row.cpu()
    abar, abar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
    coef_xt = alpha.sqrt() * (1 - abar_prev) / (1 - abar)
    variance = beta * (1 - abar_prev) / (1 - abar)
    return _rows(coef_x0, x0) * x0 + _rows(coef_xt, x_t) * x_t, variance


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, t_per_row: torch.Tensor,
               schedule: DDPMSchedule) -> torch.Tensor:
    abar = schedule.alphas_cumprod[t_per_row.cpu()]
    return (x_t - _rows((1 - abar).sqrt(), x_t) * eps) / _rows(abar.sqrt(), x_t)


def sample_steps(num_samples: int, schedule: DDPMSchedule,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One step index per sample, uniform over 0..T-1 (drawn on the host)."""
    return torch.randint(0, schedule.num_steps, (num_samples,), generator=generator)


def ddpm_training_loss(eps_model: EpsModel, x0: torch.Tensor, segment: torch.Tensor,
                       tokens_per_sample: torch.Tensor, schedule: DDPMSchedule,
                       generator: Optional[torch.Generator] = None, weighting: str = "token"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eps-prediction loss over a pack of clean tokens x0 (L, D), the packed counterpart of
    `rectified_flow.training_loss`: (loss, per-sample MSE, per-sample step index).
    `eps_model(x_t, model_time)` is the model with everything else bound."""
    t = sample_steps(tokens_per_sample.numel(), schedule, generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = q_sample(x0, t[segment.cpu()], noise, schedule)
    weights, inv_count = loss_weights(segment, tokens_per_sample, weighting)
    pred = eps_model(x_t, model_time(t, schedule.num_steps).to(x0.device))
    loss, per_sample = weighted_flow_loss(pred, noise, segment, weights, inv_count,
                                          tokens_per_sample.numel())
    return loss, per_sample, t


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG on the noise prediction: eps_u + scale * (eps_c - eps_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


@torch.no_grad()
def ddpm_sample(eps_fn: EpsModel, noise: torch.Tensor, schedule: DDPMSchedule, steps: int,
                generator: Optional[torch.Generator] = None, clip_x0: bool = False,
                progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Ancestral sampling from x_{T-1} = noise over `steps` respaced steps. `eps_fn(x, time)`
    gets the model time of the original step (one value, broadcast by the caller). The fresh
    noise of each step comes from `generator`."""
    kept, sub = schedule.respaced(steps)
    x = noise
    rows = torch.zeros(x.shape[0], dtype=torch.long)
    total = len(kept)
    for done, k in enumerate(reversed(range(total))):
        t_model = model_time(kept[k:k + 1], schedule.num_steps).to(x.device)
        eps = eps_fn(x, t_model)
        x0 = predict_x0(x, eps, rows + k, sub)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        mean, variance = q_posterior(x0, x, rows + k, sub)
        if k > 0:
            z = torch.randn(x.shape, generator=generator).to(x)
            x = mean + float(variance[0].sqrt()) * z
        else:
            x = mean  # the last step's posterior variance is 0: the mean is the sample
        if progress is not None:
            progress(done + 1, total)
    return x


@torch.no_grad()
def ddim_sample(eps_fn: EpsModel, noise: torch.Tensor, schedule: DDPMSchedule, steps: int,
                eta: float = 0.0, generator: Optional[torch.Generator] = None,
                clip_x0: bool = False,
                progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """DDIM over `steps` respaced steps; eta = 0 is deterministic, eta = 1 matches the DDPM
    posterior's variance."""
    kept, _ = schedule.respaced(steps)
    abar_all = schedule.alphas_cumprod
    x = noise
    total = len(kept)
    for done, k in enumerate(reversed(range(total))):
        t = kept[k]
        abar = float(abar_all[t])
        abar_prev = float(abar_all[kept[k - 1]]) if k > 0 else 1.0
        eps = eps_fn(x, model_time(kept[k:k + 1], schedule.num_steps).to(x.device))
        x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0 and k > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator).to(x)
        if progress is not None:
            progress(done + 1, total)
    return x
