"""A pretrained diffusers 3D VAE, loaded from a local directory, as a `LatentSpace`.

`latent.kind: diffusers` points `latent.path` at a directory written by diffusers'
`save_pretrained` (for a full pipeline checkout: its `vae/` subfolder). Its `config.json` names
the class in `_class_name`; two are supported, both causal 3D VAEs with 8x8 spatial and 4x temporal
compression (T' = 1 + (T-1)/4):

- `AutoencoderKLWan` (Wan 2.1): latents normalised per channel with the config's
  `latents_mean` / `latents_std`, as diffusers' WanPipeline does.
- `AutoencoderKLCogVideoX` (CogVideoX): latents multiplied by the config's `scaling_factor`, as
  diffusers' CogVideoX pipelines do.

Nothing is ever downloaded: the directory must exist and loading passes `local_files_only=True`.
Encoding returns the posterior mean, never a sample, so re-encoding a clip gives the same latent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from megagoku.config.schema import VAE_SPATIAL_COMPRESSION, VAE_TEMPORAL_COMPRESSION
from megagoku.models.latent import causal_latent_shape

SUPPORTED_CLASSES = ("AutoencoderKLWan", "AutoencoderKLCogVideoX")


def _read_class_name(path: Path) -> str:
    """The `_class_name` of `<path>/config.json`, or a one-line error saying what is wrong."""
    config_path = path / "config.json"
    if not config_path.is_file():
        hint = ""
        if (path / "vae" / "config.json").is_file():
            hint = f" (this looks like a pipeline checkout: use {path / 'vae'})"
        raise FileNotFoundError(f"latent.path: no diffusers VAE config at {config_path}{hint}")
    with config_path.open() as f:
        class_name = json.load(f).get("_class_name")
    if class_name not in SUPPORTED_CLASSES:
        raise ValueError(f"{config_path}: _class_name {class_name!r} is not a supported diffusers "
                         f"3D VAE (supported: {', '.join(SUPPORTED_CLASSES)})")
    return class_name


class DiffusersVAE:
    """A diffusers AutoencoderKLWan / AutoencoderKLCogVideoX behind the `LatentSpace` interface."""

    def __init__(self, path: str, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32,
                 tiles: Optional[tuple[int, int]] = None):
        # Imported here so that the rest of megagoku does not pay for importing diffusers.
        import diffusers

        path = Path(path)
        self.class_name = _read_class_name(path)
        model_class = getattr(diffusers, self.class_name)
        self.model = model_class.from_pretrained(str(path), local_files_only=True,
                                                 torch_dtype=dtype)
        self.model.eval().requires_grad_(False).to(device)
        if tiles is not None:
            # Decoding a 720p clip in one piece needs tens of GB; tiles keep memory bounded.
            self._enable_tiling(*tiles)

        # Read from the loaded model's config: it fills in the class defaults that an older
        # config.json may omit (Wan 2.1 configs predate `scale_factor_spatial`, for one).
        config = self.model.config
        if self.class_name == "AutoencoderKLWan":
            self.channels = int(config.z_dim)
            self.temporal_compression = int(config.scale_factor_temporal)
            self.spatial_compression = int(config.scale_factor_spatial)
            if len(config.latents_mean) != self.channels or len(config.latents_std) != self.channels:
                raise ValueError(f"{path / 'config.json'}: latents_mean and latents_std need "
                                 f"z_dim={self.channels} entries, got {len(config.latents_mean)} "
                                 f"and {len(config.latents_std)}")
            # (1, C, 1, 1, 1): broadcast over the batched (B, C, T, H, W) VAE latent.
            self._latents_mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(
                1, -1, 1, 1, 1)
            self._latents_std = torch.tensor(config.latents_std, dtype=torch.float32).view(
                1, -1, 1, 1, 1)
        else:
            self.channels = int(config.latent_channels)
            self.temporal_compression = int(config.temporal_compression_ratio)
            # One 2x spatial downsample per encoder block but the last, as CogVideoXPipeline
            # computes its vae_scale_factor_spatial.
            self.spatial_compression = 2 ** (len(config.block_out_channels) - 1)
            self._scaling_factor = float(config.scaling_factor)

        # The rest of megagoku (token planning, chunking, tiling in the config) assumes the
        # 4x temporal, 8x8 spatial VAEs; a Wan 2.2 VAE (16x16) would silently plan wrong shapes.
        expected = (VAE_TEMPORAL_COMPRESSION, VAE_SPATIAL_COMPRESSION)
        if (self.temporal_compression, self.spatial_compression) != expected:
            raise ValueError(f"{path / 'config.json'}: compresses {self.temporal_compression}x in "
                             f"time and {self.spatial_compression}x{self.spatial_compression} "
                             f"spatially; megagoku needs {expected[0]}x and "
                             f"{expected[1]}x{expected[1]}")

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return causal_latent_shape(self.channels, frames, height, width,
                                   self.temporal_compression, self.spatial_compression)

    def _normalise(self, vae_latent: torch.Tensor) -> torch.Tensor:
        """VAE latent (B, C, T', H', W') float32 -> the unit-scale latent the Transformer sees."""
        if self.class_name == "AutoencoderKLWan":
            # diffusers WanPipeline (pipelines/wan/pipeline_wan.py) decodes with
            # `latents / (1 / latents_std) + latents_mean`, and WanImageToVideoPipeline encodes
            # its condition with `(z - latents_mean) * (1 / latents_std)`: per channel.
            mean = self._latents_mean.to(vae_latent.device)
            std = self._latents_std.to(vae_latent.device)
            return (vae_latent - mean) / std
        # diffusers CogVideoXPipeline.decode_latents (pipelines/cogvideo/pipeline_cogvideox.py)
        # divides by `scaling_factor`, so the Transformer's latents are `z * scaling_factor`.
        # The pipeline also permutes to (B, T', C, H', W') because the CogVideoX Transformer takes
        # frames first; our latent is channels first like the VAE's, so no permute here. (Its
        # `invert_scale_latents` only concerns the image-to-video pipeline's image condition.)
        return vae_latent * self._scaling_factor

    def _denormalise(self, latent: torch.Tensor) -> torch.Tensor:
        """Exact inverse of `_normalise`."""
        if self.class_name == "AutoencoderKLWan":
            mean = self._latents_mean.to(latent.device)
            std = self._latents_std.to(latent.device)
            return latent * std + mean
        return latent / self._scaling_factor

    @torch.no_grad()
    def _enable_tiling(self, size: int, overlap: int) -> None:
        """Spatial tiles of `size` pixels overlapping by `overlap` (latent.tile_size and
        tile_overlap), in each class's own terms: Wan takes a stride, CogVideoX an overlap
        fraction. Time needs nothing: both encode and decode their clips frame-chunk by
        frame-chunk with cached causal context already (latent.chunk_frames is ours only)."""
        if self.class_name == "AutoencoderKLWan":
            self.model.enable_tiling(size, size, size - overlap, size - overlap)
        else:
            self.model.enable_tiling(size, size)
            # Set directly: enable_tiling's `factor or default` would turn an overlap of 0 into
            # the class default.
            self.model.tile_overlap_factor_height = overlap / size
            self.model.tile_overlap_factor_width = overlap / size

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 4 or video.shape[0] != 3:
            raise ValueError(f"expected a video (3, T, H, W), got shape {tuple(video.shape)}")
        self.latent_shape(*video.shape[1:])  # ValueError on frame counts / sizes the VAE rejects
        batch = video.unsqueeze(0).to(self._device, self._dtype)
        # The posterior mean: deterministic, so a resumed loader re-encodes to the same tokens.
        vae_latent = self.model.encode(batch).latent_dist.mode().float()
        return self._normalise(vae_latent)[0].to(video.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 4 or latent.shape[0] != self.channels:
            raise ValueError(f"expected a latent ({self.channels}, T', H', W'), "
                             f"got shape {tuple(latent.shape)}")
        vae_latent = self._denormalise(latent.float().unsqueeze(0).to(self._device))
        vae_latent = vae_latent.to(self._dtype)
        if self.class_name == "AutoencoderKLCogVideoX" and latent.shape[1] % 2 == 0:
            video = self._decode_cogvideox_even(vae_latent)
        else:
            video = self.model.decode(vae_latent).sample
        return video[0].float().clamp(-1.0, 1.0).to(latent.device)

    def _decode_cogvideox_even(self, vae_latent: torch.Tensor) -> torch.Tensor:
        """Decode an even number of CogVideoX latent frames to 1 + 4(T'-1) frames.

        The CogVideoX decoder keeps the first latent frame as one frame only when it is given an
        odd number of latent frames (its pipelines always generate 13 or 21); with an even number
        it upsamples every latent frame, the first included, to 4 frames, so 2 latent frames
        decode to 8 frames, not 5. The encoder did keep frame 0 on its own, so: frame 0 is the
        first latent decoded alone (exactly as a one-frame image decodes), and frames 1.. are the
        4 frames of each later latent frame from decoding the whole latent.
        """
        first_frame = self.model.decode(vae_latent[:, :, :1]).sample
        later_frames = self.model.decode(vae_latent).sample[:, :, self.temporal_compression:]
        return torch.cat([first_frame, later_frames], dim=2)

    def to(self, device: torch.device | str) -> "DiffusersVAE":
        self.model.to(device)
        return self
