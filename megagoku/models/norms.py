"""RMSNorm module over the last dimension (hidden states, and per head on queries and keys)."""

import torch
from torch import nn

from megagoku.ops import KernelChoice, rms_norm
from megagoku.parallel import grad_summed_over_tp


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = grad_summed_over_tp(self.weight) if self.grad_over_tp else self.weight
        return rms_norm(x, weight, self.eps, self.kernels)
