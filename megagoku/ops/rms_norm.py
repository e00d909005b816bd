"""RMSNorm reference: y = x / sqrt(mean(x^2) + eps) * weight, accumulated in fp32 (fp64 for fp64
inputs). The fused kernels (megagoku/ops/fused.py) are tested against it."""

from typing import Optional

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the ops compute in: float64 for float64, float32 for every narrower type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm_reference(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """Normalise over the last dim; `weight=None` for a norm without a learned gain."""
    acc = accumulation_dtype(x.dtype)
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    return y.to(x.dtype)
