"""Exponential moving average of the weights, the copy used for sampling.

Kept as plain tensors keyed by parameter name (not a model copy: megatron layers hold process
groups, which cannot be deep-copied), sharded like the parameters: one tensor per parameter,
shaped as what this rank owns of it (`parallel.shards.owned`): its tensor-parallel piece, and
under ZeRO-3 its partition of that piece. Each update is elementwise between the rank's own
pieces, so nothing is gathered to update; the whole tensors are gathered one at a time only to
be written or sampled with (`whole`, `wholes`, `state_dict`; collective where the parameters are
split).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from megagoku.parallel.shards import gather_whole, own_piece, owned


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = dict(model.named_parameters())
        self.shadow = {name: owned(p).detach().clone() for name, p in self.params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # Warm-up (decay grows as (1+n)/(10+n)) so short runs are not dominated by the init.
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(owned(param), 1.0 - decay)

    def whole(self, name: str) -> torch.Tensor:
        """The whole averaged tensor of parameter `name` (collective where it is split)."""
        return gather_whole(self.params[name], self.shadow[name])

    @torch.no_grad()
    def load(self, name: str, whole: torch.Tensor) -> None:
        """Set the average of parameter `name` from its whole tensor (this rank keeps its
        piece)."""
        self.shadow[name].copy_(own_piece(self.params[name], whole))

    @torch.no_grad()
    def reset(self, name: str) -> None:
        """Set the average of parameter `name` to the parameter's current value."""
        self.shadow[name].copy_(owned(self.params[name]))

    def wholes(self, weights: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, whole tensor) for each of `weights` (the model's tensors), the averaged
        parameters in place of the live ones, gathered one at a time as the caller asks for the
        next: a rank that drops each never holds more than one whole tensor. Collective where
        the parameters are split: every rank iterates to the end, in the same order."""
        for name, value in weights.items():
            yield name, self.whole(name) if name in self.shadow else value

    def state_dict(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`weights` (the whole model's tensors) with the averaged parameters, whole, in place
        of the live ones (collective where the parameters are split)."""
        return dict(self.wholes(weights))
