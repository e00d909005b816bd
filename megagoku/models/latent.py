"""The latent space the Transformer is trained in.

Every latent space has one interface: `encode` a video (3, T, H, W) in [-1, 1] (an image is a
one-frame video) to a latent (C, T', H', W'), `decode` back, and `latent_shape` to plan token
counts before decoding anything. The 3D causal VAE (8x8 spatial, 4x temporal; T' = 1 + (T-1)/4)
arrives with the data issue behind the same interface; the built-in default is the identity, which
trains on pixels: at 16x16 pixels it is the smallest honest latent space there is.
"""

from __future__ import annotations

import torch

from megagoku.config.schema import LatentConfig


class IdentityLatent:
    temporal_compression = 1
    spatial_compression = 1

    def __init__(self, channels: int = 3):
        if channels != 3:
            raise ValueError(f"the identity latent space has 3 (RGB) channels, not {channels}")
        self.channels = channels

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.channels, frames, height, width)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 4 or video.shape[0] != 3:
            raise ValueError(f"expected a video (3, T, H, W), got shape {tuple(video.shape)}")
        return video

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.clamp(-1.0, 1.0)


def build_latent_space(cfg: LatentConfig) -> IdentityLatent:
    if cfg.kind == "identity":
        return IdentityLatent(cfg.channels)
    raise ValueError(f"latent.kind: unknown latent space {cfg.kind!r}")
