"""The latent space the Transformer is trained in.

Every latent space has one interface (`LatentSpace`): `encode` a video (3, T, H, W) in [-1, 1]
(an image is a one-frame video) to a normalised latent (C, T', H', W'), `decode` back, and
`latent_shape` to plan token counts before decoding anything. Encoding is deterministic (the
posterior mean, not a sample): the packing loader re-encodes the samples of its window on resume
and must get the same tokens.

Three spaces sit behind it:
- `identity`: trains on pixels; at 16x16 pixels the smallest honest latent space there is.
- `causal_vae`: our 3D causal VAE (8x8 spatial, 4x temporal; `models/vae.py`), loaded from a
  `megagoku train-vae` checkpoint.
- `diffusers`: a pretrained diffusers 3D VAE from a local directory (`models/diffusers_vae.py`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from megagoku.config.schema import LatentConfig


class LatentSpace(Protocol):
    channels: int
    temporal_compression: int
    spatial_compression: int

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> "LatentSpace": ...


def causal_latent_shape(channels: int, frames: int, height: int, width: int, temporal: int,
                        spatial: int) -> tuple[int, int, int, int]:
    """(C, 1 + (T-1)/t, H/s, W/s) of a causal VAE, or ValueError naming what does not divide."""
    if frames < 1 or (frames - 1) % temporal:
        raise ValueError(f"a causal VAE with {temporal}x temporal compression takes "
                         f"{temporal}k+1 frames (1, {temporal + 1}, {2 * temporal + 1}, ...), "
                         f"got {frames}")
    if height % spatial or width % spatial:
        raise ValueError(f"{height}x{width} is not divisible by the VAE's {spatial}x{spatial} "
                         "spatial compression")
    return (channels, 1 + (frames - 1) // temporal, height // spatial, width // spatial)


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

    def to(self, device: torch.device | str) -> "IdentityLatent":
        return self


def build_latent_space(cfg: LatentConfig, device: torch.device | str = "cpu") -> LatentSpace:
    if cfg.kind == "identity":
        return IdentityLatent(cfg.channels)
    if cfg.kind == "causal_vae":
        from megagoku.models.vae import CausalVAELatent

        return CausalVAELatent.from_config(cfg).to(device)
    if cfg.kind == "diffusers":
        from megagoku.models.diffusers_vae import DiffusersVAE

        space = DiffusersVAE(cfg.path, device, tiles=(cfg.tile_size, cfg.tile_overlap))
        if space.channels != cfg.channels:
            raise ValueError(f"latent.channels: {cfg.channels} differs from the {space.channels} "
                             f"channels of the VAE in {cfg.path}")
        return space
    raise ValueError(f"latent.kind: unknown latent space {cfg.kind!r}")
