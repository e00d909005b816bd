"""The fused RMSNorm, whole-width Q/K RMSNorm, float32 adaLN modulation and 3D RoPE ops the model
calls (`dispatch`), their PyTorch references (`rms_norm`, `modulate`, `rope`), and the autograd
Functions around the csrc/ kernels (`fused`)."""

from megagoku.ops.dispatch import (KernelChoice, KernelsUnavailable, Rope3D, describe,
                                   gated_residual, modulated_norm, rms_norm, use_fused,
                                   whole_width_rms_norm)
from megagoku.ops.modulate import (gated_residual_reference, modulated_norm_reference,
                                   per_token)
from megagoku.ops.rms_norm import (accumulation_dtype, rms_norm_reference,
                                   whole_width_rms_norm_reference)
from megagoku.ops.rope import apply_rope, rope_angles, rope_inv_freq

__all__ = ["KernelChoice", "KernelsUnavailable", "Rope3D", "accumulation_dtype", "apply_rope",
           "describe", "gated_residual", "gated_residual_reference", "modulated_norm",
           "modulated_norm_reference", "per_token", "rms_norm", "rms_norm_reference",
           "rope_angles", "rope_inv_freq", "use_fused", "whole_width_rms_norm",
           "whole_width_rms_norm_reference"]
