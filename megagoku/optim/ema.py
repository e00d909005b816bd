"""Exponential moving average of the weights, the copy used for sampling.

Kept as plain tensors keyed by parameter name (not a model copy: megatron layers hold process
groups, which cannot be deep-copied), one per parameter this rank holds: its tensor-parallel
piece, read whole under ZeRO-3 for each update. Create it before ZeRO-3 partitions the model.
"""

from __future__ import annotations

import torch
from torch import nn

from megagoku.parallel.weights import gather_tp, gathered


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
            with gathered([param]):  # ZeRO-3: whole for the update; otherwise a no-op
                self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    def state_dict(self, weights: dict[str, torch.Tensor],
                   model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """`weights` (the whole model's tensors) with the averaged parameters in place of the
        live ones; given the (tensor-parallel) `model`, the TP pieces are gathered first
        (collective)."""
        params = dict(model.named_parameters()) if model is not None else {}
        out = {}
        for name, value in weights.items():
            shadow = self.shadow.get(name)
            if shadow is None:
                out[name] = value
            else:
                out[name] = gather_tp(shadow, params[name]) if name in params else shadow
        return out
