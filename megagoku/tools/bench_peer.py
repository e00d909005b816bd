"""The peer of `megagoku bench step`: diffusers' `WanTransformer3DModel` configured to the same
width, heads, depth, MLP width, patch size, channels and caption width as a megagoku model, fed
the same samples.

Wan's block is the closest public relative of Goku's released one (a gain-free LayerNorm and
float32 modulation before self-attention, Q/K RMSNorm across all heads, 3D RoPE, cross-attention
to the caption, GELU-tanh MLP, float32 gates), so a step of each at equal size and tokens
measures implementation, not architecture. The differences that remain are Wan's: one shared
timestep projection plus a per-block learned table instead of a per-block adaLN Linear, biases
on every projection, a caption MLP in front of the blocks instead of a caption RMSNorm.

Wan takes a dense batch (B, C, T, H, W): samples of different lengths are padded to the longest
(its grid), which is what a trainer without packing pays; its tokens/s counts the real tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from megagoku.config import ModelConfig


@dataclass
class PeerBatch:
    latents: torch.Tensor  # (B, C, T, H, W): every sample at the longest sample's grid
    timesteps: torch.Tensor  # (B,) in Wan's 0..1000 range
    text: torch.Tensor  # (B, S, text_dim)
    target: torch.Tensor  # like latents
    padded: bool  # whether some samples were padded to the longest


def build_peer(cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
    """Wan at megagoku's shape (its own initialisation: only the cost is compared)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
        out_channels=cfg.in_channels, text_dim=cfg.text_dim, freq_dim=cfg.timestep_freq_dim,
        ffn_dim=int(cfg.hidden_size * cfg.mlp_ratio), num_layers=cfg.depth,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg.norm_eps)
    return model.to(device)


def peer_batch(latents: list[torch.Tensor], targets: list[torch.Tensor], timesteps: torch.Tensor,
               text: torch.Tensor, device: torch.device) -> PeerBatch:
    """The pack's samples as Wan's dense batch: `latents` and `targets` (C, T, H, W) each,
    zero-padded to the largest extent along each axis; `timesteps` (B,) in [0, 1]; `text` (B, S, text_dim)."""
    longest = tuple(max(x.shape[i] for x in latents) for i in range(4))
    padded = any(tuple(x.shape) != longest for x in latents)

    def dense(xs: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros((len(xs),) + tuple(longest), dtype=xs[0].dtype)
        for i, x in enumerate(xs):
            out[i, :, :x.shape[1], :x.shape[2], :x.shape[3]] = x
        return out.to(device)

    return PeerBatch(dense(latents), 1000.0 * timesteps.to(device), text.to(device),
                     dense(targets), padded)


def peer_loss(model: torch.nn.Module, batch: PeerBatch) -> torch.Tensor:
    out = model(batch.latents, batch.timesteps, batch.text, return_dict=False)[0]
    return (out.float() - batch.target.float()).pow(2).mean()
