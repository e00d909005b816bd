"""RMSNorm references: y = x / sqrt(mean(x^2) + eps) * weight, accumulated in fp32 (fp64 for fp64
inputs), over the last dim or (Goku's Q/K norm) over all heads of a token together. The fused
kernels (megagoku/ops/fused.py) are tested against them."""

from typing import Callable, Optional

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


def whole_width_rms_norm_reference(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float,
                                   width: Optional[int] = None,
                                   sum_partials: Optional[Callable[[torch.Tensor], torch.Tensor]]
                                   = None) -> torch.Tensor:
    """RMSNorm of each token's Q (or K) over all of its heads together, as Goku's released block
    normalises the projection before splitting it into heads.

    x (tokens, heads, head_dim), any strides; weight (heads * head_dim,) or None. Under tensor
    parallelism a rank holds `heads` of the model's heads: `width` is the whole width (all ranks'
    heads x head_dim; default this rank's) and `sum_partials` sums a per-token partial sum over
    the ranks holding the other heads, differentiably (its backward sums too). Returns a new
    (tokens, heads, head_dim) tensor in x's dtype."""
    if x.dim() != 3:
        raise ValueError(f"whole-width RMSNorm wants (tokens, heads, head_dim), got {tuple(x.shape)}")
    acc = accumulation_dtype(x.dtype)
    xf = x.to(acc)
    sum_sq = xf.pow(2).sum(dim=(1, 2))
    if sum_partials is not None:
        sum_sq = sum_partials(sum_sq)
    width = x.shape[1] * x.shape[2] if width is None else width
    y = xf * torch.rsqrt(sum_sq / width + eps)[:, None, None]
    if weight is not None:
        y = y * weight.to(acc).view(x.shape[1], x.shape[2])
    return y.to(x.dtype)
