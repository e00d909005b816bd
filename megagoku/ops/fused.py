"""The fused kernels of csrc/ (built by setup.py as `megagoku.ops._C`) wrapped in autograd
Functions, and whether they can run on a device.

Each Function's forward and backward is one kernel call: RMSNorm saves only its input and the
per-row 1/rms (the reference's autograd graph keeps several full-size intermediates), and RoPE
saves nothing but the positions (its backward is the inverse rotation).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from megagoku.ops.rms_norm import accumulation_dtype

try:
    from megagoku.ops import _C
    _IMPORT_ERROR: Optional[str] = None
except ImportError as e:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

REBUILD_HINT = "build them with `pip install --no-build-isolation -e .` (see csrc/README.md)"


def unavailable_reason(device_type: str) -> Optional[str]:
    """Why the fused kernels cannot run on this kind of device, or None when they can."""
    if _C is None:
        return f"megagoku.ops._C is not importable ({_IMPORT_ERROR}); {REBUILD_HINT}"
    if device_type == "cuda" and not _C.built_with_cuda():
        return f"megagoku.ops._C was built without CUDA; {REBUILD_HINT} with a CUDA torch and nvcc"
    if device_type not in ("cpu", "cuda"):
        return f"no fused kernels for device type {device_type!r}"
    return None


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with (generic, avx2, avx512), or "none"."""
    return _C.cpu_isa() if _C is not None else "none"


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with contiguous columns: a view when the leading dims collapse to one
    stride (a head slice of a fused QKV output does), else a copy."""
    if x.dim() == 0:
        raise ValueError("rms_norm needs at least one dimension")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        x = x.contiguous()
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return x.reshape(-1, x.shape[-1])


class FusedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
        rows = _rows(x)
        # Allocated here and returned whole: a view made inside a Function could not be
        # rotated in place afterwards (autograd forbids it).
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        rstd = torch.empty(rows.shape[0], dtype=accumulation_dtype(x.dtype), device=x.device)
        _C.rms_norm_forward(rows, weight, eps, y.view(rows.shape), rstd)
        ctx.save_for_backward(rows, weight, rstd)
        ctx.shape = x.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        rows, weight, rstd = ctx.saved_tensors
        dx = torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)
        dw = None
        if weight is not None and ctx.needs_input_grad[1]:
            dw = torch.empty(rows.shape[1], dtype=rstd.dtype, device=rows.device)
        _C.rms_norm_backward(_rows(dy), rows, weight, rstd, dx, dw)
        return dx.view(ctx.shape), (dw.to(weight.dtype) if dw is not None else None), None


class FusedRope3D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                pairs: tuple[int, int], inplace: bool) -> torch.Tensor:
        if inplace:
            _C.rope_3d(x, x, positions, inv_freq, pairs[0], pairs[1], False)
            ctx.mark_dirty(x)
            out = x
        else:
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            _C.rope_3d(x, out, positions, inv_freq, pairs[0], pairs[1], False)
        ctx.save_for_backward(positions, inv_freq)
        ctx.pairs = pairs
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        positions, inv_freq = ctx.saved_tensors
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        dx = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        _C.rope_3d(grad, dx, positions, inv_freq, ctx.pairs[0], ctx.pairs[1], True)
        return dx, None, None, None, None


def rms_norm_fused(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    return FusedRMSNorm.apply(x, weight, eps)


def rope_fused(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
               split: tuple[int, int, int], inplace: bool = False) -> torch.Tensor:
    """Rotate x (L, heads, head_dim); positions (L, 3) int64 and inv_freq (head_dim // 2,)
    float64, both contiguous on x's device. In place only where x's head dim is contiguous."""
    if x.dim() != 3:
        raise ValueError(f"rope wants x of shape (tokens, heads, head_dim), got {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x, inplace = x.contiguous(), False
    return FusedRope3D.apply(x, positions, inv_freq, (split[0] // 2, split[1] // 2), inplace)
