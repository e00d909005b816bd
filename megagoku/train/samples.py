"""Samples during training (`sample.every`): rank 0 generates `sample.prompts` with the EMA weights
at the data's size, logs one grid to TensorBoard (a row per prompt, frames left to right) and
writes it with one GIF per prompt to `<run_dir>/train_samples/step_N/`.

The sampling model is a separate copy built on first use, loaded with the EMA weights each time,
so the training model, its optimizer and every random stream are left as they were: a run with
samples ends bit-identical to one without. It needs the whole model on one rank (tensor_parallel
= ulysses = 1); other layouts sample their checkpoints with `megagoku sample` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from megagoku.config import TrainingConfig
from megagoku.data.shapes import demo_prompts
from megagoku.data.video_io import frame_strip, to_uint8_frames, write_video
from megagoku.inference import Generator
from megagoku.models import TextEncoder, build_model
from megagoku.train.ema import EMA

log = logging.getLogger(__name__)


def sample_prompts(config: TrainingConfig) -> list[str]:
    if config.sample.prompts:
        return list(config.sample.prompts)
    held_out, seen = demo_prompts(config.data)
    return held_out[:2] + seen[:2]


def grid_image(videos: list[torch.Tensor], upscale: int, gap: int = 2) -> np.ndarray:
    """(H_total, W, 3) uint8: one frame strip per video, stacked with grey gaps."""
    strips = [frame_strip(to_uint8_frames(v, upscale)) for v in videos]
    width = max(s.shape[1] for s in strips)
    height = sum(s.shape[0] for s in strips) + gap * (len(strips) - 1)
    grid = np.full((height, width, 3), 96, dtype=np.uint8)
    y = 0
    for strip in strips:
        grid[y:y + strip.shape[0], :strip.shape[1]] = strip
        y += strip.shape[0] + gap
    return grid


class PeriodicSampler:
    def __init__(self, config: TrainingConfig, run_dir: Path, text_encoder: TextEncoder,
                 device: torch.device, tensorboard=None):
        self.config, self.run_dir = config, run_dir
        self.text_encoder, self.device, self.tensorboard = text_encoder, device, tensorboard
        self.every = config.sample.every
        self.prompts = sample_prompts(config)
        self.generator: Optional[Generator] = None
        if self.every and config.parallel.model_parallel_size > 1:
            log.warning("sample.every: samples during training need the whole model on one rank "
                        "(tensor_parallel = ulysses = 1); sample the checkpoints with "
                        "`megagoku sample` instead")
            self.every = 0

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @torch.no_grad()
    def sample(self, step: int, model: torch.nn.Module, ema: EMA) -> Path:
        """Generate with the EMA weights; returns the folder written."""
        cfg = self.config
        if self.generator is None:
            copy = build_model(cfg.model).to(self.device).eval()
            self.generator = Generator(cfg, copy, self.text_encoder)
        self.generator.model.load_weights(ema.state_dict(model.weights()))
        data = cfg.data
        videos = self.generator.generate(self.prompts, data.frames, data.height, data.width,
                                         cfg.sample.steps, cfg.sample.cfg_scale, cfg.sample.seed)
        out = self.run_dir / "train_samples" / f"step_{step:08d}"
        out.mkdir(parents=True, exist_ok=True)
        grid = grid_image(videos, cfg.sample.upscale)
        Image.fromarray(grid).save(out / "grid.png")
        for i, (prompt, video) in enumerate(zip(self.prompts, videos)):
            write_video(out / f"{i:02d}_{prompt.replace(' ', '_')[:60]}.gif", video,
                        cfg.sample.fps, cfg.sample.upscale)
        (out / "prompts.txt").write_text("".join(p + "\n" for p in self.prompts))
        if self.tensorboard is not None:
            self.tensorboard.add_image("samples", grid, step, dataformats="HWC")
            self.tensorboard.flush()
        return out
