"""Samples during training (`sample.every`): rank 0 generates `sample.prompts` with the EMA weights
at the data's size, logs one grid to TensorBoard (a row per prompt, frames left to right) and
writes it with one GIF per prompt to `<run_dir>/train_samples/step_N/`.

The sampling model is a separate one-process copy built on first use, loaded with the EMA weights
each time (`inference.periodic.PeriodicGeneration`, shared with the evaluation during training),
so the training model, its optimizer and every random stream are left as they were: a run with
samples ends bit-identical to one without. Every layout samples: under TP, Ulysses or ZeRO-3
every rank takes part in gathering the EMA, one tensor at a time, into rank 0's copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from megagoku.config import TrainingConfig
from megagoku.data.shapes import demo_prompts
from megagoku.data.video_io import frame_strip, to_uint8_frames, write_video
from megagoku.inference import Generator
from megagoku.inference.periodic import PeriodicGeneration
from megagoku.launch import heartbeat
from megagoku.models import TextEncoder


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


class PeriodicSampler(PeriodicGeneration):
    def __init__(self, config: TrainingConfig, run_dir: Path, text_encoder: TextEncoder,
                 device: torch.device, tensorboard=None):
        """`tensorboard`: the trainer's MetricsLogger (its `add_image`), or None."""
        super().__init__(config, run_dir, text_encoder, device, config.sample.every)
        self.tensorboard = tensorboard
        self.prompts = sample_prompts(config)

    @torch.no_grad()
    @heartbeat.phase("samples")  # each sampling step reports progress (inference/generate.py)
    def run(self, step: int, generator: Generator) -> Path:
        """Generate the prompts; returns the folder written."""
        cfg = self.config
        data = cfg.data
        videos = generator.generate(self.prompts, data.frames, data.height, data.width,
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
            self.tensorboard.add_image("samples", grid, step)
        return out
