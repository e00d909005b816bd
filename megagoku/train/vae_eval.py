"""How well a trained VAE reconstructs, as `megagoku train-vae` reports it at the end.

On held-out clips (`held_out_clips`: for the built-in shapes, clips of the holdout captions from
another data seed, so neither the clips nor their colour/shape/direction triples were trained
on), the VAE's deterministic reconstruction (posterior mean, decoded, clamped to [-1, 1] as the
latent space does) is scored three ways:

- foreground MSE against the baseline that outputs each clip's background everywhere: a VAE that
  learnt only the background (what the first recipe did) scores a ratio of about 1;
- whole-frame PSNR, 10 log10(peak-to-peak^2 / MSE) with the peak-to-peak of [-1, 1], from the MSE
  over every pixel of every clip;
- for the shapes, the share of clips from whose reconstruction `describe_video` reads the same
  colour and the same direction as from the original: what the latent demo relies on.

A picture puts originals over their reconstructions, frame by frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from megagoku.config import DataConfig
from megagoku.data import ShapesDataset, describe_video
from megagoku.data.video_io import frame_strip, to_uint8_frames
from megagoku.models.vae import CausalVAE

FOREGROUND_THRESHOLD = 0.1  # |pixel - background| in some channel above this: a foreground pixel
HELD_OUT_SEED_OFFSET = 1000  # held-out clips come from data.seed + this: never in the stream
PICTURE_CLIPS = 4


def foreground_mask(x: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, T, H, W) -> (background (B, 3, 1, 1, 1), mask (B, 1, T, H, W) bool): the background
    is each sample's per-channel median pixel, the foreground the pixels that differ from it by
    more than `threshold` in some channel (the shape, for the moving shapes on black)."""
    background = x.flatten(2).median(dim=2).values[:, :, None, None, None]
    mask = ((x - background).abs() > threshold).any(dim=1, keepdim=True)
    return background, mask


def held_out_clips(data: DataConfig, count: int) -> list[torch.Tensor]:
    """`count` clips of the built-in shapes (data.frames x height x width) that training never
    reads: another seed, and the holdout captions' split when the config holds some out."""
    split = "holdout" if data.holdout else "train"
    dataset = ShapesDataset(replace(data, image_fraction=0.0,
                                    seed=data.seed + HELD_OUT_SEED_OFFSET), split)
    return [dataset[i].pixels for i in range(count)]


@dataclass
class ReconstructionFigures:
    clips: int
    fg_mse: float  # MSE over the foreground pixels (`foreground_mask`) of all clips
    background_fg_mse: float  # the same for outputting each clip's background everywhere
    psnr: float  # whole frame, dB
    # Share of clips whose reconstruction `describe_video` reads as the original (colour and
    # direction both); None where the clips are not the built-in shapes.
    agreement: Optional[float]
    picture: Optional[str]

    @property
    def fg_ratio(self) -> float:
        return self.fg_mse / self.background_fg_mse if self.background_fg_mse else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "fg_ratio": self.fg_ratio}

    def summary(self) -> str:
        text = (f"{self.clips} held-out clips: foreground MSE {self.fg_mse:.4f} = "
                f"{self.fg_ratio:.1%} of the background-only {self.background_fg_mse:.4f}, "
                f"PSNR {self.psnr:.1f} dB")
        if self.agreement is not None:
            text += f", colour and direction read back from {self.agreement:.0%}"
        return text


@torch.no_grad()
def reconstruct(vae: CausalVAE, clips: list[torch.Tensor], batch_size: int,
                device: torch.device) -> list[torch.Tensor]:
    """The posterior mean decoded and clamped, clip by clip (same-shaped clips only)."""
    was_training = vae.training
    vae.eval()
    out = []
    for chunk in torch.stack(clips).split(batch_size):
        mean, _ = vae.encode(chunk.to(device))
        out += list(vae.decode(mean).clamp(-1.0, 1.0).cpu())
    vae.train(was_training)
    return out


def score(originals: list[torch.Tensor], reconstructions: list[torch.Tensor],
          describe: bool) -> tuple[float, float, float, Optional[float]]:
    """(fg MSE, background-only fg MSE, PSNR, describe_video agreement or None)."""
    x, y = torch.stack(originals).float(), torch.stack(reconstructions).float()
    background, mask = foreground_mask(x)
    mask = mask.expand_as(x)
    fg = max(int(mask.sum()), 1)
    fg_mse = float((y - x)[mask].pow(2).sum()) / fg
    background_fg_mse = float((background - x).expand_as(x)[mask].pow(2).sum()) / fg
    mse = float((y - x).pow(2).mean())
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
    agreement = None
    if describe:
        agreement = float(np.mean([describe_video(r) == describe_video(o)
                                   for o, r in zip(originals, reconstructions)]))
    return fg_mse, background_fg_mse, psnr, agreement


def write_picture(originals: list[torch.Tensor], reconstructions: list[torch.Tensor],
                  out: Path, upscale: int = 1) -> Path:
    """Per clip, its frames left to right: the original above, the reconstruction below."""
    rows = []
    for original, reconstruction in zip(originals, reconstructions):
        rows += [frame_strip(to_uint8_frames(original, upscale)),
                 frame_strip(to_uint8_frames(reconstruction, upscale))]
    gap = 6
    width = max(r.shape[1] for r in rows)
    canvas = np.full((sum(r.shape[0] for r in rows) + gap * (len(rows) // 2 - 1), width, 3), 255,
                     dtype=np.uint8)
    y = 0
    for i, row in enumerate(rows):
        canvas[y:y + row.shape[0], :row.shape[1]] = row
        y += row.shape[0] + (gap if i % 2 else 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out)
    return out


def evaluate_reconstructions(vae: CausalVAE, clips: list[torch.Tensor], batch_size: int,
                             device: torch.device, picture: Optional[Path],
                             describe: bool) -> ReconstructionFigures:
    reconstructions = reconstruct(vae, clips, batch_size, device)
    fg_mse, background_fg_mse, psnr, agreement = score(clips, reconstructions, describe)
    if picture is not None:
        write_picture(clips[:PICTURE_CLIPS], reconstructions[:PICTURE_CLIPS], picture)
    return ReconstructionFigures(len(clips), fg_mse, background_fg_mse, psnr, agreement,
                                 str(picture) if picture is not None else None)
