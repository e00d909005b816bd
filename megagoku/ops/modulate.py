"""adaLN modulation in float32, as Goku's released block computes it, and the per-sample rows it
reads: the PyTorch references the fused kernels are tested against.

In a pack every sample has its own timestep, so its own shift, scale and gate rows (B, dim);
`segment` (sorted: tokens are grouped by sample) names each token's sample.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from megagoku.ops.rms_norm import accumulation_dtype, rms_norm_reference

NormKind = Literal["layer", "rms"]


class _PerToken(torch.autograd.Function):
    """values (B, D) -> (L, D), row `segment[i]` for token i, with a backward that sums each
    sample's token gradients in token order. Indexing (`values[segment]`) would do the same
    forward, but its backward, an accumulating `index_put_`, adds rows from several threads on the
    CPU: the rounding of the sums then changed from run to run (seen as last-bit differences in
    the adaLN and timestep-embedder gradients), and no resumed run could be bit-exact."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        ctx.counts = torch.bincount(segment, minlength=values.shape[0])
        return values.index_select(0, segment)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Segments are sorted (tokens of a pack are grouped by sample, pad tokens last), so a
        # segment sum is each sample's sum; a sample with no token here gets zeros.
        return torch.segment_reduce(grad, "sum", lengths=ctx.counts, axis=0), None


def per_token(values: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Per-sample rows (adaLN modulation) spread to the tokens of each sample, deterministically
    (see `_PerToken`). `segment` must be sorted."""
    return _PerToken.apply(values, segment)


def modulated_norm_reference(x: torch.Tensor, kind: NormKind, weight: Optional[torch.Tensor],
                             eps: float, shift: torch.Tensor, scale: torch.Tensor,
                             segment: torch.Tensor) -> torch.Tensor:
    """norm(x) * (1 + scale) + shift in float32 (float64 for float64 x), cast to x's dtype.

    x (L, dim); shift and scale (B, dim), one row per sample; segment (L,). `kind` "layer": a
    LayerNorm without gain (`weight` must be None), kept in float32 (torch's LayerNorm under
    autocast); "rms": RMSNorm with an optional gain, rounded to x's dtype before the modulation
    (the released RMSNorm returns x's dtype)."""
    acc = accumulation_dtype(x.dtype)
    if kind == "layer":
        if weight is not None:
            raise ValueError("the modulated LayerNorm has no gain")
        h = F.layer_norm(x.to(acc), (x.shape[-1],), eps=eps)
    elif kind == "rms":
        h = rms_norm_reference(x, weight, eps).to(acc)
    else:
        raise ValueError(f"unknown norm kind {kind!r} (layer, rms)")
    scale = per_token(1 + scale.to(acc), segment)
    return (h * scale + per_token(shift.to(acc), segment)).to(x.dtype)


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor,
                             segment: torch.Tensor) -> torch.Tensor:
    """x + gate * out with the product in float32 cast to out's dtype (the released block's
    gates); gate (B, dim), one row per sample."""
    acc = accumulation_dtype(out.dtype)
    return x + (per_token(gate.to(acc), segment) * out.to(acc)).to(out.dtype)
