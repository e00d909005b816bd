"""Prompt adherence on the built-in shapes data, read back from pixels, split into prompts seen
in training and held-out ones.

Two readers per generated clip:
- `pixel`: `describe_video` (data/shapes.py), hand-written rules: colour (nearest palette entry of
  the shape's mean colour) and direction (slope of the centroid). No shape: at 16 px the rules
  cannot tell a circle from a square.
- `classifier`: the in-repo 3D conv network (`classifier.py`): colour, shape and direction; `all`
  is the share of clips with every attribute of the prompt right.

Prompt sets (`prompt_set`): `held_out` = the data's `holdout` captions (never trained on), `seen`
= every other video caption, `demo` = the held-out ones plus the four the demo shows, `all` =
seen + held-out. Images (single frames, "a red circle") are all seen in training: images carry no
direction and are never held out.

`real_clips` draws real clips of given captions from `ShapesDataset` itself (by rejection, with a
seed of its own), so the reference of the Fréchet distances is exactly the training distribution.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from megagoku.config.schema import DataConfig
from megagoku.data.shapes import (COLOURS, SHAPES, SEEN_PROMPTS, ShapesDataset,
                                  all_video_captions, demo_prompts, describe_video,
                                  parse_caption)
from megagoku.evaluation.classifier import ATTRIBUTES, ShapesClassifier, predict

PROMPT_SETS = ("demo", "seen", "held_out", "all")
# Offset of the seed real reference clips are drawn with, away from the training stream's.
REFERENCE_SEED_OFFSET = 104729


def image_captions() -> list[str]:
    return [f"a {c} {s}" for c in COLOURS for s in SHAPES]


def prompt_set(data: DataConfig, which: str) -> list[tuple[str, str]]:
    """(prompt, split) pairs of a named set of video prompts; split is held_out or seen."""
    if which not in PROMPT_SETS:
        raise ValueError(f"prompts: {which!r} is not one of {', '.join(PROMPT_SETS)}")
    held_out, _ = demo_prompts(data)
    held = set(held_out)
    seen = [c for c in all_video_captions() if c not in held]
    if which == "held_out":
        return [(p, "held_out") for p in held_out]
    if which == "seen":
        return [(p, "seen") for p in seen]
    if which == "demo":
        return [(p, "held_out") for p in held_out] + \
            [(p, "seen") for p in SEEN_PROMPTS if p not in held]
    return [(p, "held_out") for p in held_out] + [(p, "seen") for p in seen]


def real_clips(captions: list[str], per_caption: int, data: DataConfig, kind: str,
               seed: Optional[int] = None) -> torch.Tensor:
    """`per_caption` real clips of every caption, in the order [c0 x n, c1 x n, ...]:
    (len(captions) * n, 3, T, H, W). Drawn from ShapesDataset with every combination allowed."""
    seed = data.seed + REFERENCE_SEED_OFFSET if seed is None else seed
    cfg = DataConfig(height=data.height, width=data.width, frames=data.frames,
                     displacement=data.displacement, holdout=[], seed=seed,
                     image_fraction=1.0 if kind == "image" else 0.0)
    dataset = ShapesDataset(cfg)
    wanted = {c: per_caption for c in captions}
    found: dict[str, list[torch.Tensor]] = defaultdict(list)
    limit = 500 * max(1, len(captions) * per_caption)
    index = 0
    while any(found_count < n for found_count, n in
              ((len(found[c]), n) for c, n in wanted.items())):
        if index >= limit:
            missing = [c for c in captions if len(found[c]) < per_caption]
            raise ValueError(f"no real {kind} of {missing[0]!r} in the built-in data")
        sample = dataset[index]
        index += 1
        if sample.caption in wanted and len(found[sample.caption]) < per_caption:
            found[sample.caption].append(sample.pixels)
    return torch.stack([clip for c in captions for clip in found[c]])


@dataclass
class Scored:
    """One generated (or real) clip, read back."""

    prompt: str
    split: str
    kind: str  # video or image
    seed: Optional[int]
    pixel: dict[str, Optional[str]]
    classifier: dict[str, str]

    def checks(self) -> dict[str, bool]:
        want = parse_caption(self.prompt)
        out = {f"pixel_{k}": self.pixel.get(k) == want[k] for k in ("colour", "direction")
               if want[k] is not None}
        clf = {k: self.classifier[k] == want[k] for k in ATTRIBUTES if want[k] is not None}
        out.update({f"classifier_{k}": v for k, v in clf.items()})
        out["classifier_all"] = all(clf.values())
        return out

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "split": self.split, "kind": self.kind, "seed": self.seed,
                "pixel": self.pixel, "classifier": self.classifier, **self.checks()}


def score_clips(clips: torch.Tensor, prompts: list[str], splits: list[str], kind: str,
                classifier: ShapesClassifier, seeds: Optional[list[Optional[int]]] = None
                ) -> tuple[list[Scored], torch.Tensor]:
    """Read every clip (N, 3, T, H, W) back with both readers; returns the records and the
    classifier's features (N, F) for the Fréchet distance."""
    preds, features = predict(classifier, clips)
    seeds = seeds if seeds is not None else [None] * len(prompts)
    records = []
    for i, (prompt, split) in enumerate(zip(prompts, splits)):
        pixel = describe_video(clips[i])
        if kind == "image":
            pixel = {"colour": pixel["colour"]}
        reading = {name: ATTRIBUTES[name][int(preds[name][i])] for name in ATTRIBUTES
                   if kind == "video" or name != "direction"}
        records.append(Scored(prompt, split, kind, seeds[i], pixel, reading))
    return records, features


def summarise(records: list[Scored]) -> dict[str, dict[str, float]]:
    """Share of clips passing each check, per split and over all: {split: {check: share}}, with
    `clips` the count."""
    groups: dict[str, list[Scored]] = defaultdict(list)
    for r in records:
        groups[r.split].append(r)
        groups["all"].append(r)
    out = {}
    for split, rs in groups.items():
        checks = [r.checks() for r in rs]
        keys = sorted({k for c in checks for k in c})
        out[split] = {k: float(np.mean([c[k] for c in checks if k in c])) for k in keys}
        out[split]["clips"] = len(rs)
    return out
