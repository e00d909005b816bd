"""What the config cannot check alone, checked before any work: the encoder's width, the data,
the latent space, the device and the kernels. Every failure is a ConfigError naming the
config file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megagoku.config import ConfigError, TrainingConfig
from megagoku.data import ManifestError, ShapesDataset
from megagoku.data.cache import CachedDataset, check_cache_matches
from megagoku.data.files import ManifestDataset
from megagoku.models import build_latent_space
from megagoku.models.latent import LatentSpace
from megagoku.models.text_encoder import encoder_width, resolve_encoder_path
from megagoku.ops import KernelsUnavailable, use_fused
from megagoku.parallel import resolve_device


def build_dataset(config: TrainingConfig, device: str = "cpu"
                  ) -> ShapesDataset | ManifestDataset | CachedDataset:
    """The sample source of `data.kind`; raises ValueError (or ManifestError) naming the field."""
    if config.data.kind == "shapes":
        return ShapesDataset(config.data)
    if config.data.kind == "cache":
        dataset = CachedDataset(config.data)
        check_cache_matches(dataset.cache, config, resolve_encoder_path(config.text.encoder))
        return dataset
    dataset = ManifestDataset(config.data, device)
    if config.model.patch_size[0] > 1 and any(r.kind == "image" for r in dataset.records):
        raise ValueError(f"model.patch_size: {list(config.model.patch_size)} patches "
                         f"{config.model.patch_size[0]} frames at once, but {config.data.manifest} "
                         "holds images (1 frame)")
    return dataset


@dataclass
class Inputs:
    """What preflight built: the sample source, the device, and the latent space (on the CPU
    until the rank knows its GPU; None when training from the cache, whose samples carry their
    latents)."""

    dataset: ShapesDataset | ManifestDataset | CachedDataset
    device: torch.device
    latent_space: Optional[LatentSpace]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.latent_space is None:
            raise RuntimeError("data.kind: cache, but a sample came without its latent")
        return self.latent_space.encode(pixels)


def preflight(config: TrainingConfig, source: str) -> Inputs:
    """Check and build the inputs of a run; every failure is a ConfigError naming `source`."""
    try:
        device = resolve_device(config.train.device)
    except RuntimeError as e:
        raise ConfigError(f"{source}: train.device: {e}") from None
    try:
        width = encoder_width(config.text.encoder)
        dataset = build_dataset(config, device.type)
        latent_space = None if config.data.kind == "cache" else build_latent_space(config.latent)
    except ManifestError as e:
        raise ConfigError(f"{source}: data.manifest: {e}") from None
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None
    if config.train.precision == "bf16" and device.type != "cuda":
        raise ConfigError(f"{source}: train.precision: bf16 needs a GPU (megatron's layers run "
                          "their backward under CUDA autocast only); use fp32 or auto on the CPU")
    if width != config.model.text_dim:
        raise ConfigError(f"{source}: model.text_dim: {config.model.text_dim} differs from the "
                          f"width {width} of text encoder {config.text.encoder}")
    try:
        use_fused(config.model.kernels, device.type)
    except KernelsUnavailable as e:
        raise ConfigError(f"{source}: model.kernels: {e}") from None
    return Inputs(dataset, device, latent_space)
