"""Where this rank's tokens sit in the pack, computed once per forward for every block.

Without sequence parallelism every rank holds the whole pack and all of this collapses to one
layout. With Ulysses the rank holds a contiguous slice of the padded pack (see
`megagoku.parallel.sequence`); with megatron SP its residual stream holds a 1/TP part of that
slice. Pad tokens (past the pack's end) form their own segment for self-attention, so no real
token attends to them, and borrow the last sample's conditioning elsewhere (their outputs are
discarded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megagoku.models.attention import SeqLayout
from megagoku.parallel import SequenceShard


@dataclass
class PackContext:
    self_layout: SeqLayout  # the whole padded pack: self-attention after the all-to-all
    query_layout: SeqLayout  # this rank's Ulysses slice, per sample (maybe empty): cross-attention
    text_layout: SeqLayout
    slice_segment: torch.Tensor  # sample of each token of the Ulysses slice
    residual_segment: torch.Tensor  # sample of each token in this rank's residual stream


def build_pack_context(cu_seqlens: torch.Tensor, text_cu_seqlens: torch.Tensor,
                       shard: SequenceShard, tp_rank: int = 0,
                       tp_split: int = 1) -> PackContext:
    """`tp_split`: the TP size under megatron SP (the residual stream is split that many ways),
    else 1."""
    cu = cu_seqlens.to(torch.int64)
    total = int(cu[-1])
    padded = shard.padded_length(total)
    text_layout = SeqLayout.from_cu_seqlens(text_cu_seqlens)
    if padded == total and shard.size == 1:
        layout = SeqLayout.from_cu_seqlens(cu_seqlens)
        slice_layout = layout
    else:
        self_cu = cu if padded == total else torch.cat([cu, cu.new_tensor([padded])])
        layout = SeqLayout.from_cu_seqlens(self_cu)
        start, stop = shard.bounds(total)
        held = layout.segment[start:stop].clamp(max=len(cu) - 2)  # pad -> last sample
        counts = torch.bincount(held, minlength=len(cu) - 1)
        slice_cu = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        slice_layout = SeqLayout.from_cu_seqlens(slice_cu, allow_empty=True)
    slice_segment = slice_layout.segment
    residual = slice_segment
    if tp_split > 1:
        n = slice_segment.numel() // tp_split
        residual = slice_segment[tp_rank * n:(tp_rank + 1) * n]
    return PackContext(layout, slice_layout, text_layout, slice_segment, residual)
