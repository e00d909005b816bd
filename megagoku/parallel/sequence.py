"""Sequence parallelism over a packed sequence: which tokens this rank holds, and Ulysses'
all-to-all between "my tokens, all my heads" and "all tokens, some of my heads".

A pack of L tokens is padded at the end to a multiple of `multiple` (the Ulysses size, times the
TP size under megatron SP) and cut into `size` equal contiguous slices. Pad, never drop: a pack
whose length does not divide keeps every token, and the pad tokens are masked out of attention
(they form their own segment) and out of the loss (weight 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megagoku.parallel import state
from megagoku.parallel.layers import all_to_all


@dataclass(frozen=True)
class SequenceShard:
    size: int = 1  # Ulysses ranks
    rank: int = 0
    multiple: int = 1  # the padded length is a multiple of this

    def padded_length(self, total: int) -> int:
        return math.ceil(total / self.multiple) * self.multiple

    def bounds(self, total: int) -> tuple[int, int]:
        """[start, stop) of this rank's slice in the padded pack."""
        n = self.padded_length(total) // self.size
        return self.rank * n, (self.rank + 1) * n

    def slice(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """This rank's rows of a packed (L, ...) tensor, with `fill` past the end of the pack."""
        total = x.shape[0]
        start, stop = self.bounds(total)
        if stop <= total:
            return x[start:stop]
        pad = x.new_full((stop - max(start, total), *x.shape[1:]), fill)
        return torch.cat([x[start:total], pad]) if start < total else pad


def current_shard() -> SequenceShard:
    lay = state.layout()
    multiple = lay.ulysses * (lay.tensor_parallel if lay.megatron_sp else 1)
    return SequenceShard(lay.ulysses, state.ulysses_rank(), multiple)


def seq_to_heads(x: torch.Tensor) -> torch.Tensor:
    """Ulysses: (n local tokens, ..., H, D) -> (n * size tokens, ..., H / size, D).

    Rank r sends head group j of its tokens to rank j and receives head group r of every rank's
    tokens; concatenated in rank order they are the whole (padded) pack."""
    size = state.layout().ulysses
    if size == 1:
        return x
    n, *mid, heads, dim = x.shape
    x = x.reshape(n, *mid, size, heads // size, dim).movedim(-3, 0).contiguous()
    out = all_to_all(state.ulysses_group(), x.reshape(size * n, *mid, heads // size, dim))
    return out


def heads_to_seq(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `seq_to_heads`: (n * size, ..., H / size, D) -> (n, ..., H, D)."""
    size = state.layout().ulysses
    if size == 1:
        return x
    total, *mid, heads, dim = x.shape
    out = all_to_all(state.ulysses_group(), x.contiguous())
    out = out.reshape(size, total // size, *mid, heads, dim).movedim(0, -3)
    return out.reshape(total // size, *mid, size * heads, dim)


def gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every Ulysses rank's slice (`SequenceShard.slice`) back into the whole (L, ...) pack, on
    every rank, padding dropped. For inference: no gradient flows through it."""
    size = state.layout().ulysses
    if size == 1:
        return local[:total]
    import torch.distributed as dist

    pieces = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(pieces, local.contiguous(), group=state.ulysses_group())
    return torch.cat(pieces)[:total]
