"""3D rotary position embedding reference.

The head dim is split into three even parts rotated by the token's t, h and w positions.
Channels are rotated in adjacent pairs (x[2i], x[2i+1]) by angle pos * theta^(-2i/d_axis).
Positions come per token, so samples packed into one sequence each start at 0.
"""

import torch


def rope_angles(positions: torch.Tensor, split: tuple[int, int, int], theta: float) -> torch.Tensor:
    """positions (L, 3) integer (t, h, w) -> angles (L, head_dim // 2), float32."""
    parts = []
    for axis, dim in enumerate(split):
        if dim == 0:
            continue
        exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
        inv_freq = theta ** -exponent
        parts.append(positions[:, axis].to(torch.float64)[:, None] * inv_freq[None, :])
    return torch.cat(parts, dim=-1).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate x (L, heads, head_dim) by angles (L, head_dim // 2); returns a new tensor."""
    cos = angles.cos()[:, None, :]
    sin = angles.sin()[:, None, :]
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
