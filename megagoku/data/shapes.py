"""Built-in data: short videos (and single-frame images) of one coloured shape moving in a straight
line on a black background, captioned with colour, shape and direction ("a red circle moving
left"; images: "a red circle"). Sample `i` of seed `s` is the same on every machine.

`describe_video` reads colour and direction back from pixels; the demo uses it to check that
generated videos do what their prompts say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from megagoku.config.schema import SHAPES_IMAGE_FRACTION, DataConfig

# RGB in [-1, 1]; the background is black (-1, -1, -1).
COLOURS = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
}
SHAPES = ("circle", "square", "triangle")
# (dy, dx) in image coordinates: y grows downwards.
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
RADIUS = 0.15  # shape radius as a fraction of the shorter side
SUPERSAMPLE = 4  # sub-pixels per pixel side, for anti-aliased edges


def video_caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def all_video_captions() -> list[str]:
    return [video_caption(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


# Combinations the demo and the training-time samples show besides the held-out ones.
SEEN_PROMPTS = ["a red circle moving right", "a blue square moving left",
                "a green circle moving up", "a yellow triangle moving down"]


def demo_prompts(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(held-out prompts, seen prompts) of the shapes data: captions never trained on, and some
    that were."""
    held_out = [p if p.startswith("a ") else f"a {p}" for p in cfg.holdout]
    seen = [p for p in SEEN_PROMPTS if p.removeprefix("a ") not in cfg.holdout]
    return held_out, seen


@dataclass
class ShapeSample:
    pixels: torch.Tensor  # (3, T, H, W) float32 in [-1, 1]; T = 1 for images
    caption: str
    kind: str  # "video" or "image"


def _coverage(shape: str, cy: float, cx: float, r: float, h: int, w: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape (anti-aliased by supersampling)."""
    s = SUPERSAMPLE
    ys = (np.arange(h * s) + 0.5) / s
    xs = (np.arange(w * s) + 0.5) / s
    y, x = np.meshgrid(ys, xs, indexing="ij")
    if shape == "circle":
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(y - cy) <= 0.85 * r) & (np.abs(x - cx) <= 0.85 * r)
    elif shape == "triangle":  # apex up
        inside = (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(h, s, w, s).mean(axis=(1, 3))


def render(colour: str, shape: str, centres: np.ndarray, h: int, w: int) -> torch.Tensor:
    """centres (T, 2) of (y, x) in pixels -> video (3, T, H, W) in [-1, 1]."""
    r = RADIUS * min(h, w)
    rgb = np.asarray(COLOURS[colour], dtype=np.float32)[:, None, None]
    frames = []
    for cy, cx in centres:
        a = _coverage(shape, cy, cx, r, h, w).astype(np.float32)[None]
        frames.append(-1.0 * (1 - a) + rgb * a)
    return torch.from_numpy(np.stack(frames, axis=1))


class ShapesDataset:
    """Deterministic, indexable, endless. `split="train"` never yields a held-out
    (colour, shape, direction) triple; images never carry a direction and are all in train."""

    def __init__(self, cfg: DataConfig, split: str = "train"):
        self.cfg = cfg
        self.split = split
        self.holdout = {h.removeprefix("a ").strip() for h in cfg.holdout}
        known = {c.removeprefix("a ") for c in all_video_captions()}
        unknown = self.holdout - known
        if unknown:
            raise ValueError(f"data.holdout: {sorted(unknown)[0]!r} is not a caption of the "
                             "built-in data (e.g. 'red square moving up')")
        allowed = self.holdout if split == "holdout" else known - self.holdout
        if not allowed:
            raise ValueError(f"data.holdout: leaves no video caption for the {split!r} split")

    def __getitem__(self, index: int) -> ShapeSample:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, index])
        h, w = cfg.height, cfg.width
        r = RADIUS * min(h, w)
        fraction = SHAPES_IMAGE_FRACTION if cfg.image_fraction is None else cfg.image_fraction
        if rng.random() < fraction:
            colour = str(rng.choice(list(COLOURS)))
            shape = str(rng.choice(SHAPES))
            centre = np.array([[rng.uniform(r, h - r), rng.uniform(r, w - r)]])
            return ShapeSample(render(colour, shape, centre, h, w), f"a {colour} {shape}", "image")
        while True:
            colour = str(rng.choice(list(COLOURS)))
            shape = str(rng.choice(SHAPES))
            direction = str(rng.choice(list(DIRECTIONS)))
            held_out = video_caption(colour, shape, direction).removeprefix("a ") in self.holdout
            if held_out == (self.split == "holdout"):
                break
        dy, dx = DIRECTIONS[direction]
        size = h if dy else w
        travel = min(rng.uniform(*cfg.displacement) * size, size - 2 * r)
        start_along = rng.uniform(r, size - r - travel)
        across = rng.uniform(r, (w if dy else h) - r)
        steps = np.linspace(0.0, 1.0, cfg.frames) if cfg.frames > 1 else np.zeros(1)
        # Position along the motion axis; "left"/"up" run the same path backwards.
        along = start_along + travel * steps
        if dx < 0 or dy < 0:
            along = along[::-1]
        centres = np.stack([along, np.full_like(along, across)], 1) if dy else \
            np.stack([np.full_like(along, across), along], 1)
        return ShapeSample(render(colour, shape, centres, h, w),
                           video_caption(colour, shape, direction), "video")


def describe_video(video: torch.Tensor, min_coverage: float = 0.5) -> dict[str, Optional[str]]:
    """Read colour and direction of motion from pixels of a (3, T, H, W) video in [-1, 1].

    Colour: the palette entry nearest to the mean colour of the shape's pixels.
    Direction: the dominant axis and sign of the shape's centroid trajectory (least-squares slope).
    """
    v = video.float().clamp(-1, 1)
    weight = ((v.max(dim=0).values + 1) / 2).clamp(0, 1)  # (T, H, W): 0 on black
    weight = torch.where(weight > 0.3, weight, torch.zeros_like(weight))
    mass = weight.sum(dim=(1, 2))
    result: dict[str, Optional[str]] = {"colour": None, "direction": None}
    if float(mass.min()) < min_coverage:
        return result
    mean_rgb = (v * weight[None]).sum(dim=(1, 2, 3)) / weight.sum()
    palette = torch.tensor(list(COLOURS.values()))
    result["colour"] = list(COLOURS)[int(((palette - mean_rgb) ** 2).sum(1).argmin())]
    t_len, h, w = weight.shape
    if t_len < 2:
        return result
    ys = torch.arange(h, dtype=torch.float32)[None, :, None]
    xs = torch.arange(w, dtype=torch.float32)[None, None, :]
    cy = (weight * ys).sum(dim=(1, 2)) / mass
    cx = (weight * xs).sum(dim=(1, 2)) / mass
    tt = torch.arange(t_len, dtype=torch.float32) - (t_len - 1) / 2
    slope_y = float((tt * (cy - cy.mean())).sum() / (tt * tt).sum())
    slope_x = float((tt * (cx - cx.mean())).sum() / (tt * tt).sum())
    if abs(slope_x) >= abs(slope_y):
        result["direction"] = "right" if slope_x > 0 else "left"
    else:
        result["direction"] = "down" if slope_y > 0 else "up"
    return result


def parse_caption(caption: str) -> dict[str, Optional[str]]:
    """"a red circle moving left" -> {"colour": "red", "shape": "circle", "direction": "left"}."""
    words = caption.lower().split()
    return {
        "colour": next((w for w in words if w in COLOURS), None),
        "shape": next((w for w in words if w in SHAPES), None),
        "direction": next((w for w in words if w in DIRECTIONS), None),
    }
