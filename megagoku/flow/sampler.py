"""Euler ODE sampler for rectified flow, with classifier-free guidance.

Integrates dx/dt = v(x, t) from t=0 (noise) to t=1 (data) over a schedule of times. With the
time shift the schedule spends more steps at high noise, matching training.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from megagoku.flow.rectified_flow import shift_time

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def sampling_schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 0 to 1 (inclusive), shifted towards noise when shift > 1."""
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return shift_time(t, shift)


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG: v_u + scale * (v_c - v_u); scale 1 is the conditional model alone."""
    return v_uncond + scale * (v_cond - v_uncond)


@torch.no_grad()
def euler_sample(velocity: Velocity, noise: torch.Tensor, schedule: torch.Tensor,
                 progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Integrate from the noise along `schedule`; `progress(done, total)` after each step."""
    x = noise
    total = len(schedule) - 1
    for i, (t0, t1) in enumerate(zip(schedule[:-1].tolist(), schedule[1:].tolist())):
        x = x + (t1 - t0) * velocity(x, t0)
        if progress is not None:
            progress(i + 1, total)
    return x
