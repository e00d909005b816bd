"""3D rotary position embedding: the reference and the frequency table.

The head dim is split into three even parts rotated by the token's t, h and w positions.
Channels are rotated in adjacent pairs (x[2i], x[2i+1]) by angle pos * theta^(-2i/d_axis).
Positions come per token, so samples packed into one sequence each start at 0.
"""

import torch

from megagoku.ops.rms_norm import accumulation_dtype


def rope_inv_freq(split: tuple[int, int, int], theta: float,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The frequency of each rotated pair, (head_dim // 2,) float64: theta^(-2k / split[axis])."""
    parts = [theta ** -(torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
             for dim in split if dim > 0]
    return torch.cat(parts)


def rope_angles(positions: torch.Tensor, split: tuple[int, int, int], theta: float) -> torch.Tensor:
    """positions (L, 3) integer (t, h, w) -> angles (L, head_dim // 2), float64."""
    axis = torch.cat([torch.full((dim // 2,), a, dtype=torch.long, device=positions.device)
                      for a, dim in enumerate(split)])
    pos = positions.to(torch.float64)[:, axis]
    return pos * rope_inv_freq(split, theta, positions.device)[None, :]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate x (L, heads, head_dim) by angles (L, head_dim // 2); returns a new tensor. The
    angles are rounded to the accumulation type before their cosine, as the kernels do."""
    a = angles.to(accumulation_dtype(x.dtype))
    cos = a.cos()[:, None, :]
    sin = a.sin()[:, None, :]
    xf = x.to(a.dtype).unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
