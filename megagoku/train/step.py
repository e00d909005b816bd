"""One training step's loss on this rank, for any process grid.

The pack arrives whole from the loader; this rank keeps its Ulysses slice (padded, see
`megagoku.parallel.sequence`) of the noisy tokens, targets and positions, and the model returns
the velocity of that slice. The loss returned is this rank's share; `pack_loss` sums the shares.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from megagoku.config.schema import FlowConfig
from megagoku.data.packing import PackedBatch
from megagoku.flow.rectified_flow import training_loss
from megagoku.parallel import SequenceShard, layout, ulysses_group
from megagoku.parallel.collectives import mean_over, sum_over

__all__ = ["autocast", "mean_over", "pack_total", "step_loss"]


def autocast(precision: str, device: torch.device):
    """bf16 autocast over the fp32 weights (which stay the optimizer's master copy), or fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_loss(model: nn.Module, batch: PackedBatch, text: torch.Tensor,
              text_cu_seqlens: torch.Tensor, flow: FlowConfig, generator: torch.Generator,
              shard: SequenceShard, precision: str = "fp32",
              first_frame: Optional[torch.Tensor] = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(this rank's loss share, its per-sample error shares, per-sample t). `first_frame`: the
    pack's I2V condition (`data.packing.first_frame_tokens`), for image-conditioned models."""
    positions = shard.slice(batch.positions)
    condition = None if first_frame is None else shard.slice(first_frame)

    def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(precision, x_t.device):
            return model(x_t, t, positions, batch.cu_seqlens, text, text_cu_seqlens, condition)

    return training_loss(velocity, batch.tokens, batch.segment, batch.tokens_per_sample(), flow,
                         generator, local=shard.slice)


def pack_total(share: torch.Tensor) -> torch.Tensor:
    """Sum a per-rank share (loss, per-sample errors) over the Ulysses ranks of the pack; the
    loss is then averaged over the replicas with `mean_over` (the same value on every rank)."""
    if layout().ulysses == 1:
        return share.detach()
    return sum_over(share.detach(), ulysses_group())
