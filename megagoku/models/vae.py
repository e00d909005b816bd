"""The 3D causal VAE: 8x8 spatial and 4x temporal compression, KL latent, images as one frame.

A video of T = 4k+1 frames becomes 1 + k latent frames: the first frame is encoded alone and every
later latent frame covers four pixel frames. Causality is what makes images and videos share one
latent space: no layer looks at a later frame, so latent frame 0 of a clip is exactly the latent
of its first frame as an image.

Every temporal operation is causal and every normalisation is per frame (GroupNorm over the
channels and pixels of one frame, never over time), so a long clip can be encoded in chunks: each
causal convolution keeps the last frames it saw (`streaming`) and the chunked result equals
encoding at once. Frames larger than a tile are split spatially into overlapping tiles blended
linearly (`tiling.py`), an approximation near tile borders and in the norms' statistics (taken
per tile), as in every tiled VAE with GroupNorm. Both bound the memory of a 720p clip.

With `patch_size` 2 each frame's 2x2 pixel squares are folded into channels at the input and
unfolded from them at the output (LTX-Video's VAE folds 4x4), and the levels compress the
remaining 4x4: no layer runs at full resolution, where a thin network's convolutions cost most of
a step (docs/architecture.md, "the VAE's whole-frame PSNR").

The network starts as a per-frame autoencoder (`CausalConv3d._start_on_the_current_frame`);
what it takes from earlier frames is learnt.

Layout: (B, C, T, H, W) inside; the latent-space face (`CausalVAELatent`) takes (3, T, H, W).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from megagoku.config.loader import ConfigError, config_from_dict, to_dict
from megagoku.config.schema import (VAE_SPATIAL_COMPRESSION, VAE_TEMPORAL_COMPRESSION,
                                    LatentConfig, VAEConfig)
from megagoku.models.latent import causal_latent_shape
from megagoku.models.tiling import tiled
from megagoku.storage import write_tensors

WEIGHTS_FILE = "vae.safetensors"
META_FILE = "vae.json"
NORM_GROUPS = 8  # per-frame GroupNorm groups (fewer where the channels do not divide by 8)
LOGVAR_INIT = -8.0  # the posterior's initial log-variance: a standard deviation of 0.018


class FrameGroupNorm(nn.Module):
    """GroupNorm over (channels of a group, H, W) of each frame on its own: no statistic spans
    two frames, so it is causal and chunkable in time.

    The statistics must span space: a per-position norm (RMS over channels at each pixel, what
    this VAE had first) cannot remove what is the same at every pixel of a frame. On sparse
    content (a small shape on a flat background) the background's constant feature vector then
    dominates every layer, the content's share shrinks at each downsampling, and the latent
    hardly differs between clips: the decoder can only learn the mean image (docs/architecture.md,
    "the VAE reconstructed only the background")."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.groups = math.gcd(channels, NORM_GROUPS)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = F.group_norm(frames.float(), self.groups, self.weight, self.bias, self.eps)
        return y.to(x.dtype).reshape(b, t, c, h, w).transpose(1, 2)


class Conv3d(nn.Conv3d):
    """nn.Conv3d, with one sample on a CPU without autograd sent to oneDNN directly.

    PyTorch's CPU dispatch takes its slow reference kernel (`slow_conv3d_forward`) for a batch of
    one, which is how clips are encoded for the cache and decoded after sampling: measured at
    64x64x17 (torch 2.13, one thread), one clip encoded in 1.68 s against 0.14 s for a batch of
    four, and an 8-channel 3x3x3 conv 55 ms against 3.7 ms through oneDNN, same result to 3e-6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_grad_enabled() and self.padding_mode == "zeros"
                and torch.backends.mkldnn.is_available()):
            return torch.mkldnn_convolution(x.contiguous(), self.weight, self.bias, self.padding,
                                            self.stride, self.dilation, self.groups)
        return super().forward(x)


class CausalConv3d(nn.Module):
    """Conv3d that pads time on the past side only (zeros before the first frame).

    Streaming: between `streaming()` calls' chunks, the conv keeps the last kt - st padded input
    frames and prepends them to the next chunk instead of zeros, so chunked == all at once as
    long as every chunk's frames are consumed exactly by the stride.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (3, 3, 3),
                 stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        kt, kh, kw = kernel
        self.time_kernel, self.time_stride = kt, stride[0]
        self.conv = Conv3d(cin, cout, kernel, stride, padding=(0, kh // 2, kw // 2))
        self.streaming = False
        self.tail: Optional[torch.Tensor] = None
        if kt > 1:
            self._start_on_the_current_frame()

    @torch.no_grad()
    def _start_on_the_current_frame(self) -> None:
        """Initialise as a per-frame operation; training learns what to take from the past.

        A spatial conv keeps only its current-frame taps (scaled to a 2D conv's fan-in), as
        inflated 2D weights would; a purely temporal conv (the down/upsamplers) starts as the
        identity on the current frame, each of its cout // cin outputs a copy. Random past taps
        and random temporal mixing start every frame's features as a blend of its neighbours',
        which training must first undo (the earlier session saw slower learning with them; not
        re-measured: docs/architecture.md, "the VAE reconstructed only the background")."""
        weight, bias = self.conv.weight, self.conv.bias
        cout, cin, kt, kh, kw = weight.shape
        if kh * kw > 1:
            weight[:, :, -1] *= math.sqrt(kt)
            weight[:, :, :-1] = 0.0
        elif cout % cin == 0:
            weight.zero_()
            bias.zero_()
            eye = torch.eye(cin, dtype=weight.dtype)
            for k in range(cout // cin):
                weight[k * cin:(k + 1) * cin, :, -1, 0, 0] = eye

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt, st = self.time_kernel, self.time_stride
        if kt > 1:
            if self.tail is not None:
                x = torch.cat([self.tail, x], dim=2)
            else:
                x = F.pad(x, (0, 0, 0, 0, kt - 1, 0))
        if self.streaming and kt > st:
            if (x.shape[2] - kt) % st:
                raise ValueError(f"a chunk of {x.shape[2]} padded frames does not end on the "
                                 f"time stride {st}")
            self.tail = x[:, :, x.shape[2] - (kt - st):].detach()
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(FrameGroupNorm(cin), nn.SiLU(), CausalConv3d(cin, cout),
                                  FrameGroupNorm(cout), nn.SiLU(), CausalConv3d(cout, cout))
        self.skip = Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (never across frames)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = FrameGroupNorm(channels)
        self.qkv = Conv3d(channels, 3 * channels, 1)
        self.proj = Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, 3, c)
        q, k, v = qkv.unbind(dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W (stride-2 conv per frame); with `time`, also halve time causally: a causal
    kernel-3 stride-2 conv over frames keeps the first frame alone (1 + 2m -> 1 + m)."""

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.spatial = Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2))
        self.temporal = CausalConv3d(channels, channels, (3, 1, 1), (2, 1, 1)) if time else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spatial(F.pad(x, (0, 1, 0, 1)))
        return self.temporal(x) if self.temporal is not None else x


class Upsample(nn.Module):
    """Double H and W (nearest + conv); with `time`, also double time: a causal conv makes two
    frames' channels per latent frame, except the clip's first frame, which stays one
    (1 + m -> 1 + 2m), mirroring `Downsample`."""

    def __init__(self, channels: int, time: bool):
        super().__init__()
        self.spatial = Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = CausalConv3d(channels, 2 * channels, (3, 1, 1)) if time else None
        self.started = False  # streaming: the clip's first frame has been through already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal is not None:
            first = not self.started
            self.started = self.temporal.streaming
            b, c, t, h, w = x.shape
            y = self.temporal(x).view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5)
            y = y.reshape(b, c, 2 * t, h, w)
            x = y[:, :, 1:] if first else y  # the first frame: one output, not two
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return self.spatial(x)


def halves_time(levels: int) -> list[bool]:
    """Whether each of the `levels - 1` downsamplings (encoder order) also halves time: the
    last two do, 4x in all."""
    return [d >= levels - 3 for d in range(levels - 1)]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C * p * p, T, H / p, W / p): each frame's p x p pixel squares
    folded into channels."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `patchify`."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.patch = cfg.patch_size
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        time_down = halves_time(len(widths))
        layers: list[nn.Module] = [CausalConv3d(3 * self.patch ** 2, widths[0])]
        cin = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(cin, width))
                cin = width
            if level < len(widths) - 1:
                layers.append(Downsample(cin, time_down[level]))
        layers += [ResBlock(cin, cin)]
        if cfg.mid_attention:
            layers.append(FrameAttention(cin))
        moments = CausalConv3d(cin, 2 * cfg.latent_channels)  # mean and log-variance
        with torch.no_grad():
            # The posterior starts narrow: with log-variance 0, its unit noise would drown the
            # few tenths by which an untrained encoder's means differ between clips, and the
            # decoder would learn the mean image first (docs/architecture.md).
            moments.conv.weight[cfg.latent_channels:] = 0.0
            moments.conv.bias[cfg.latent_channels:] = LOGVAR_INIT
        layers += [ResBlock(cin, cin), FrameGroupNorm(cin), nn.SiLU(), moments]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(patchify(x, self.patch))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.patch = cfg.patch_size
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers][::-1]
        time_up = halves_time(len(widths))[::-1]
        cin = widths[0]
        layers: list[nn.Module] = [CausalConv3d(cfg.latent_channels, cin), ResBlock(cin, cin)]
        if cfg.mid_attention:
            layers.append(FrameAttention(cin))
        layers.append(ResBlock(cin, cin))
        for level, width in enumerate(widths):
            for _ in range(cfg.blocks_per_level + 1):
                layers.append(ResBlock(cin, width))
                cin = width
            if level < len(widths) - 1:
                layers.append(Upsample(cin, time_up[level]))
        layers += [FrameGroupNorm(cin), nn.SiLU(), CausalConv3d(cin, 3 * self.patch ** 2)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.layers(z), self.patch)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), averaged over every latent element."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class CausalVAE(nn.Module):
    """The network: `encode` -> (mean, logvar), `decode` latent -> pixels, on (B, C, T, H, W).
    `forward` is the training pass: reconstruction from a posterior sample, and the KL term."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.encoder(video)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(video)
        noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean)
        z = mean + (0.5 * logvar).exp() * noise
        return self.decode(z), kl_divergence(mean, logvar)

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """Within the block, successive calls continue one clip (see `CausalConv3d`)."""
        self._set_streaming(True)
        try:
            yield
        finally:
            self._set_streaming(False)

    def _set_streaming(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.streaming, m.tail = on, None
            elif isinstance(m, Upsample):
                m.started = False

    def save(self, folder: str | Path, latents_mean: list[float], latents_std: list[float]) -> Path:
        """`folder/vae.safetensors` + `folder/vae.json` (shape and latent normalisation)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_tensors(folder / WEIGHTS_FILE,  # the umask's mode (storage.py)
                      {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()})
        meta = {"config": to_dict(self.config), "latents_mean": latents_mean,
                "latents_std": latents_std}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return folder


def load_vae(folder: str | Path) -> tuple[CausalVAE, list[float], list[float]]:
    """The network and its latent normalisation from a `megagoku train-vae` folder."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"latent.path: {folder} is not a causal VAE folder (needs "
                                f"{META_FILE} and {WEIGHTS_FILE}, written by megagoku train-vae)")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = config_from_dict(VAEConfig, meta["config"], f"{meta_path}: config")
        mean, std = [float(v) for v in meta["latents_mean"]], [float(v) for v in meta["latents_std"]]
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: unreadable VAE description: {e!r}") from None
    if len(mean) != cfg.latent_channels or len(std) != cfg.latent_channels or min(std) <= 0:
        raise ValueError(f"{meta_path}: latents_mean/latents_std need {cfg.latent_channels} "
                         "entries each, std positive")
    vae = CausalVAE(cfg)
    vae.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return vae, mean, std


class CausalVAELatent:
    """The VAE as a latent space: frozen, deterministic (posterior mean), normalised per channel
    to zero mean and unit variance with the statistics `train-vae` measured, and chunked in time
    and tiled in space so that long, large clips fit in memory."""

    temporal_compression = VAE_TEMPORAL_COMPRESSION
    spatial_compression = VAE_SPATIAL_COMPRESSION

    def __init__(self, vae: CausalVAE, latents_mean: list[float], latents_std: list[float],
                 chunk_frames: int = 16, tile_size: int = 256, tile_overlap: int = 64):
        self.vae = vae.eval().requires_grad_(False)
        self.channels = vae.config.latent_channels
        self.mean = torch.tensor(latents_mean).view(-1, 1, 1, 1)
        self.std = torch.tensor(latents_std).view(-1, 1, 1, 1)
        self.chunk_frames = chunk_frames
        self.tile_size, self.tile_overlap = tile_size, tile_overlap

    @classmethod
    def from_config(cls, cfg: LatentConfig) -> "CausalVAELatent":
        vae, mean, std = load_vae(cfg.path)
        if vae.config.latent_channels != cfg.channels:
            raise ValueError(f"latent.channels: {cfg.channels} differs from the "
                             f"{vae.config.latent_channels} channels of the VAE in {cfg.path}")
        return cls(vae, mean, std, cfg.chunk_frames, cfg.tile_size, cfg.tile_overlap)

    def to(self, device: torch.device | str) -> "CausalVAELatent":
        self.vae.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return causal_latent_shape(self.channels, frames, height, width,
                                   self.temporal_compression, self.spatial_compression)

    def _encode_chunked(self, video: torch.Tensor) -> torch.Tensor:
        """(1, 3, T, h, w) -> posterior mean (1, C, T', h/8, w/8): the first frame, then
        `chunk_frames` at a time, carrying the causal convolutions' last frames over."""
        pieces = [video[:, :, :1]] + list(video[:, :, 1:].split(self.chunk_frames, dim=2))
        pieces = [p for p in pieces if p.shape[2]]  # an image has no later frames
        with self.vae.streaming():
            return torch.cat([self.vae.encode(p)[0] for p in pieces], dim=2)

    def _decode_chunked(self, latent: torch.Tensor) -> torch.Tensor:
        step = self.chunk_frames // self.temporal_compression
        pieces = [latent[:, :, :1]] + list(latent[:, :, 1:].split(step, dim=2))
        pieces = [p for p in pieces if p.shape[2]]
        with self.vae.streaming():
            return torch.cat([self.vae.decode(p) for p in pieces], dim=2)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 4 or video.shape[0] != 3:
            raise ValueError(f"expected a video (3, T, H, W), got shape {tuple(video.shape)}")
        self.latent_shape(*video.shape[1:])  # raises on a size the VAE cannot take
        x = video.to(self.device, torch.float32).unsqueeze(0)
        mean = tiled(self._encode_chunked, x, self.tile_size, self.tile_overlap,
                     1 / self.spatial_compression)
        return ((mean[0] - self.mean) / self.std).float()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 4 or latent.shape[0] != self.channels:
            raise ValueError(f"expected a latent ({self.channels}, T, H, W), got shape "
                             f"{tuple(latent.shape)}")
        z = (latent.to(self.device, torch.float32) * self.std + self.mean).unsqueeze(0)
        s = self.spatial_compression
        pixels = tiled(self._decode_chunked, z, self.tile_size // s, self.tile_overlap // s, s)
        return pixels[0].clamp(-1.0, 1.0)
