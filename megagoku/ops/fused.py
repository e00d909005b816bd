"""The fused kernels of csrc/ (built by setup.py as `megagoku.ops._C`) wrapped in autograd
Functions, and whether they can run on a device.

Each Function's forward and backward is one kernel call: RMSNorm saves only its input and the
per-row 1/rms (the reference's autograd graph keeps several full-size intermediates), and RoPE
saves nothing but the positions (its backward is the inverse rotation). Goku's whole-width Q/K
norm is one call too, or, under tensor parallelism, a partial row sum, the all-reduce it is given,
and the call that applies the total. The modulated norm saves its input and per-row statistics
and returns the per-sample shift and scale gradients, the gated residual the per-sample gate's
(no per-token copy of the modulation is ever made).
"""

from __future__ import annotations

from typing import Callable, Optional

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


def _heads(x: torch.Tensor) -> torch.Tensor:
    """x (tokens, heads, head_dim) with a contiguous head dim: a strided Q or K of a fused QKV
    output is read where it lies; anything else is copied."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


class FusedWholeWidthRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Optional[torch.Tensor], eps: float, width: int,
                sum_partials: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
        x = _heads(x)
        acc = accumulation_dtype(x.dtype)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        rstd = torch.empty(x.shape[0], dtype=acc, device=x.device)
        sum_sq = None
        if sum_partials is not None:  # tensor parallel: this rank's heads, then all ranks'
            sum_sq = torch.empty(x.shape[0], dtype=acc, device=x.device)
            _C.whole_width_partial_sums(x, None, x, sum_sq)
            sum_sq = sum_partials(sum_sq)
        _C.whole_width_rms_norm_forward(x, weight, eps, width, sum_sq, y, rstd)
        ctx.save_for_backward(x, weight, rstd)
        ctx.width, ctx.sum_partials = width, sum_partials
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dy = _heads(dy)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dw = None
        if weight is not None and ctx.needs_input_grad[1]:
            dw = torch.empty(weight.numel(), dtype=rstd.dtype, device=x.device)
        sum_gx = None
        if ctx.sum_partials is not None:
            sum_gx = torch.empty(x.shape[0], dtype=rstd.dtype, device=x.device)
            _C.whole_width_partial_sums(dy, weight, x, sum_gx)
            sum_gx = ctx.sum_partials(sum_gx)
        _C.whole_width_rms_norm_backward(dy, x, weight, rstd, ctx.width, sum_gx, dx, dw)
        return dx, (dw.to(weight.dtype) if dw is not None else None), None, None, None


class FusedModulatedNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, weight: Optional[torch.Tensor], eps: float,
                shift: torch.Tensor, scale: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        rows = _rows(x)
        acc = accumulation_dtype(x.dtype)
        ctx.mod_dtypes = (shift.dtype, scale.dtype)
        # Per-sample rows in the accumulation type, contiguous columns (chunks of the adaLN output
        # keep their row stride: no copy).
        shift, scale = (t.to(acc) if t.dtype != acc else t for t in (shift, scale))
        shift, scale = (t if t.stride(-1) == 1 else t.contiguous() for t in (shift, scale))
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        rstd = torch.empty(rows.shape[0], dtype=acc, device=x.device)
        mean = torch.empty(rows.shape[0], dtype=acc, device=x.device) if kind == "layer" else None
        segment = segment.long().contiguous()
        _C.modulated_norm_forward(rows, kind, weight, eps, shift, scale, segment,
                                  y.view(rows.shape), mean, rstd)
        ctx.save_for_backward(rows, weight, scale, segment, mean, rstd)
        ctx.kind, ctx.shape = kind, x.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        rows, weight, scale, segment, mean, rstd = ctx.saved_tensors
        dx = torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)
        dshift = torch.empty(scale.shape, dtype=rstd.dtype, device=rows.device)
        dscale = torch.empty(scale.shape, dtype=rstd.dtype, device=rows.device)
        dw = None
        if weight is not None and ctx.needs_input_grad[2]:
            dw = torch.empty(rows.shape[1], dtype=rstd.dtype, device=rows.device)
        _C.modulated_norm_backward(_rows(dy), rows, ctx.kind, weight, scale, segment, mean, rstd,
                                   dx, dshift, dscale, dw)
        shift_dtype, scale_dtype = ctx.mod_dtypes
        return (dx.view(ctx.shape), None, (dw.to(weight.dtype) if dw is not None else None),
                None, dshift.to(shift_dtype), dscale.to(scale_dtype), None)


class FusedGatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor,
                segment: torch.Tensor) -> torch.Tensor:
        x_rows, out_rows = _rows(x), _rows(out)
        acc = accumulation_dtype(out.dtype)
        ctx.gate_dtype = gate.dtype
        gate = gate.to(acc) if gate.dtype != acc else gate
        gate = gate if gate.stride(-1) == 1 else gate.contiguous()
        segment = segment.long().contiguous()
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _C.gated_residual_forward(x_rows, gate, out_rows, segment, y.view(x_rows.shape))
        ctx.save_for_backward(gate, out_rows, segment)
        ctx.out_shape = out.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        gate, out, segment = ctx.saved_tensors
        dout = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        dgate = torch.empty(gate.shape, dtype=gate.dtype, device=out.device)
        _C.gated_residual_backward(_rows(dy), gate, out, segment, dout, dgate)
        return dy, dgate.to(ctx.gate_dtype), dout.view(ctx.out_shape), None


def whole_width_rms_norm_fused(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float,
                               width: Optional[int] = None,
                               sum_partials: Optional[Callable[[torch.Tensor], torch.Tensor]]
                               = None) -> torch.Tensor:
    """Goku's Q/K RMSNorm over all heads of each token of x (tokens, heads, head_dim); see
    `megagoku.ops.whole_width_rms_norm_reference` for `width` and `sum_partials`."""
    if x.dim() != 3:
        raise ValueError(f"whole-width RMSNorm wants (tokens, heads, head_dim), got {tuple(x.shape)}")
    width = x.shape[1] * x.shape[2] if width is None else width
    return FusedWholeWidthRMSNorm.apply(x, weight, eps, width, sum_partials)


def modulated_norm_fused(x: torch.Tensor, kind: str, weight: Optional[torch.Tensor], eps: float,
                         shift: torch.Tensor, scale: torch.Tensor,
                         segment: torch.Tensor) -> torch.Tensor:
    """norm(x) * (1 + scale) + shift in float32; see `megagoku.ops.modulated_norm_reference`."""
    if x.dim() != 2:
        raise ValueError(f"the modulated norm wants x of shape (tokens, dim), got {tuple(x.shape)}")
    return FusedModulatedNorm.apply(x, kind, weight, eps, shift, scale, segment)


def gated_residual_fused(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor,
                         segment: torch.Tensor) -> torch.Tensor:
    """x + gate * out, the product in float32 cast to out's dtype; see
    `megagoku.ops.gated_residual_reference`. x and out: (tokens, dim), one dtype."""
    if x.dim() != 2 or x.shape != out.shape or x.dtype != out.dtype:
        raise ValueError(f"the gated residual wants x and out of one (tokens, dim) shape and "
                         f"dtype, got {tuple(x.shape)} {x.dtype} and {tuple(out.shape)} "
                         f"{out.dtype}")
    return FusedGatedResidual.apply(x, gate, out, segment)


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
