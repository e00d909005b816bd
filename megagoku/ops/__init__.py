"""The fused RMSNorm and 3D RoPE ops the model calls (`dispatch`), their PyTorch references
(`rms_norm`, `rope`), and the autograd Functions around the csrc/ kernels (`fused`)."""

from megagoku.ops.dispatch import (KernelChoice, KernelsUnavailable, Rope3D, describe, rms_norm,
                                   use_fused)
from megagoku.ops.rms_norm import accumulation_dtype, rms_norm_reference
from megagoku.ops.rope import apply_rope, rope_angles, rope_inv_freq

__all__ = ["KernelChoice", "KernelsUnavailable", "Rope3D", "accumulation_dtype", "apply_rope",
           "describe", "rms_norm", "rms_norm_reference", "rope_angles", "rope_inv_freq",
           "use_fused"]
