"""The ops the model calls: the fused kernels where they run, else the PyTorch reference.

`kernels` is the model config's choice: "auto" takes the fused kernels when they are built for the
tensor's device and otherwise says once, in the log, that the reference runs instead; "fused"
requires them (check it before work starts with `use_fused`); "reference" never uses them.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Literal, Optional

import torch

from megagoku.ops import fused
from megagoku.ops.modulate import (NormKind, gated_residual_reference,
                                   modulated_norm_reference)
from megagoku.ops.rms_norm import rms_norm_reference, whole_width_rms_norm_reference
from megagoku.ops.rope import apply_rope, rope_angles, rope_inv_freq

log = logging.getLogger(__name__)

KernelChoice = Literal["auto", "fused", "reference"]


class KernelsUnavailable(RuntimeError):
    """`kernels: fused` was asked for where the fused kernels cannot run."""


@functools.lru_cache(maxsize=None)
def use_fused(kernels: KernelChoice, device_type: str) -> bool:
    """Whether the ops run fused on this device type; raises KernelsUnavailable for "fused"."""
    if kernels == "reference":
        return False
    reason = fused.unavailable_reason(device_type)
    if reason is None:
        return True
    if kernels == "fused":
        raise KernelsUnavailable(f"fused kernels cannot run on {device_type}: {reason}")
    log.warning("fused kernels unavailable on %s, using the PyTorch reference ops: %s",
                device_type, reason)
    return False


def describe(kernels: KernelChoice, device_type: str) -> str:
    """What the ops run as on this device, for the training log."""
    if not use_fused(kernels, device_type):
        return "PyTorch reference ops"
    return "fused csrc kernels" + (f" (CPU {fused.cpu_isa()})" if device_type == "cpu" else "")


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float,
             kernels: KernelChoice = "auto") -> torch.Tensor:
    """RMSNorm over the last dim; `weight=None` for a norm without a learned gain."""
    if use_fused(kernels, x.device.type):
        return fused.rms_norm_fused(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def whole_width_rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float,
                         width: Optional[int] = None,
                         sum_partials: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                         kernels: KernelChoice = "auto") -> torch.Tensor:
    """Goku's Q/K RMSNorm over all heads of each token of x (tokens, heads, head_dim); under
    tensor parallelism `width` is all ranks' width and `sum_partials` sums over the TP group
    (see `whole_width_rms_norm_reference`)."""
    if use_fused(kernels, x.device.type):
        return fused.whole_width_rms_norm_fused(x, weight, eps, width, sum_partials)
    return whole_width_rms_norm_reference(x, weight, eps, width, sum_partials)


def modulated_norm(x: torch.Tensor, kind: NormKind, weight: Optional[torch.Tensor], eps: float,
                   shift: torch.Tensor, scale: torch.Tensor, segment: torch.Tensor,
                   kernels: KernelChoice = "auto") -> torch.Tensor:
    """norm(x) * (1 + scale) + shift in float32, per-sample shift and scale (B, dim) spread over
    the tokens by `segment` (see `modulated_norm_reference`)."""
    if use_fused(kernels, x.device.type):
        return fused.modulated_norm_fused(x, kind, weight, eps, shift, scale, segment)
    return modulated_norm_reference(x, kind, weight, eps, shift, scale, segment)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor, segment: torch.Tensor,
                   kernels: KernelChoice = "auto") -> torch.Tensor:
    """x + gate * out, the product in float32 cast to out's dtype (see
    `gated_residual_reference`). The kernel takes x and out of one dtype (the residual stream
    and a block's output always are); anything else runs the reference."""
    if use_fused(kernels, x.device.type) and x.dtype == out.dtype and x.dim() == 2 \
            and x.shape == out.shape:
        return fused.gated_residual_fused(x, gate, out, segment)
    return gated_residual_reference(x, gate, out, segment)


@functools.lru_cache(maxsize=16)
def _inv_freq(split: tuple[int, int, int], theta: float, device: torch.device) -> torch.Tensor:
    return rope_inv_freq(split, theta, device)


class Rope3D:
    """The 3D rotation of one pack's tokens, applied to queries and keys of every layer.

    Built once per forward from the tokens' (t, h, w) positions: the fused path rotates from the
    positions and a cached frequency table (cos/sin computed in the kernel), the reference path
    from angles computed on first use."""

    def __init__(self, positions: torch.Tensor, split: tuple[int, int, int], theta: float,
                 kernels: KernelChoice = "auto"):
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must be (tokens, 3), got {tuple(positions.shape)}")
        self.positions = positions.long().contiguous()
        self.split = tuple(int(s) for s in split)
        self.theta = float(theta)
        self.kernels = kernels
        self._angles: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Rotate x (tokens, heads, head_dim). `inplace` lets the fused path overwrite x (for a
        fresh tensor such as a norm's output); the reference always returns a new tensor."""
        if use_fused(self.kernels, x.device.type):
            inv_freq = _inv_freq(self.split, self.theta, x.device)
            return fused.rope_fused(x, self.positions, inv_freq, self.split, inplace)
        if self._angles is None:
            self._angles = rope_angles(self.positions, self.split, self.theta)
        return apply_rope(x, self._angles)
