"""Exponential moving average of the weights, the copy used for sampling.

Kept as plain tensors keyed by parameter name (not a model copy: megatron layers hold process
groups, which cannot be deep-copied), in the layout of `model.state_dict()`.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # Warm-up (decay grows as (1+n)/(10+n)) so short runs are not dominated by the init.
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    def state_dict(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`weights` (the model's tensors) with the averaged parameters in place of the live ones."""
        return {name: self.shadow.get(name, value) for name, value in weights.items()}
