"""The norms of the blocks: RMSNorm over the last dimension (hidden states, and per head on queries
and keys), the gain-free LayerNorm of Goku's released block, and Goku's whole-width Q/K RMSNorm."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megagoku.ops import KernelChoice, rms_norm, whole_width_rms_norm
from megagoku.parallel import grad_summed_over_tp, mark_tp_split, sum_over_tp


class RMSNorm(nn.Module):
    """`grad_over_tp`: the weight is replicated over the tensor-parallel group but each rank
    applies it to only part of the data (its heads, or its sequence shard): its gradient is
    summed over the group, as megatron does for its sequence-parallel norms. `kernels`: the
    model config's choice of fused or reference op (megagoku.ops.dispatch)."""

    def __init__(self, dim: int, eps: float = 1e-6, learnable: bool = True,
                 grad_over_tp: bool = False, kernels: KernelChoice = "auto"):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if learnable else None
        self.grad_over_tp = grad_over_tp and learnable
        self.kernels = kernels

    def gain(self) -> Optional[torch.Tensor]:
        """The weight as this rank applies it (None without a gain)."""
        return grad_summed_over_tp(self.weight) if self.grad_over_tp else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.gain(), self.eps, self.kernels)


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension without affine parameters (Goku's norm before
    self-attention); in x's dtype, as torch's LayerNorm outside autocast."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.eps)


class WholeWidthRMSNorm(nn.Module):
    """Goku's Q/K norm: one RMSNorm over all heads of a token together, with a gain as wide
    (heads x head_dim), applied before the split into heads.

    Under tensor parallelism this rank holds `num_heads / tp_size` heads and the matching slice
    of the gain (a TP-split parameter, like the projection's rows): each rank sums the squares of
    its heads, the sums are added over the TP group (`sum_over_tp`), and each rank normalises its
    own heads with the total. Input (tokens, local heads, head_dim), read where it lies (a strided
    view of a fused QKV output); output a new tensor of that shape."""

    def __init__(self, num_heads: int, head_dim: int, tp_size: int, eps: float = 1e-6,
                 kernels: KernelChoice = "auto"):
        super().__init__()
        self.eps = eps
        self.width = num_heads * head_dim
        self.weight = nn.Parameter(torch.ones(num_heads // tp_size * head_dim))
        self.split = tp_size > 1
        # marked at every TP size, as megatron marks its layers: the memory plan counts the
        # parameters that TP splits from a model built at TP = 1
        mark_tp_split(self.weight)
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return whole_width_rms_norm(x, self.weight, self.eps, self.width,
                                    sum_over_tp if self.split else None, self.kernels)
