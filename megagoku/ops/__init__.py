"""Python face of the fused kernels: the PyTorch reference implementations live here, and the
`csrc/` extension (issue: fused RMSNorm and 3D RoPE) will dispatch behind the same functions."""

from megagoku.ops.rms_norm import rms_norm
from megagoku.ops.rope import apply_rope, rope_angles

__all__ = ["apply_rope", "rms_norm", "rope_angles"]
