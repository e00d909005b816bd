"""RMSNorm reference: y = x / sqrt(mean(x^2) + eps) * weight, accumulated in fp32."""

from typing import Optional

import torch


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """Normalise over the last dim; `weight=None` for a norm without a learned gain."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)
