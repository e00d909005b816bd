"""The learning-rate schedule: a factor of the base rate per step, for torch's LambdaLR."""

from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 1.0
                  ) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_ratio` at `total_steps`
    (constant at 1 when `min_ratio` is 1)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_ratio + (1.0 - min_ratio) * cosine

    return factor


def lr_lambda(cfg, step: int) -> float:
    """The factor at `step` of a `train` config section (warmup_steps, steps, min_lr_ratio)."""
    return warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)(step)
