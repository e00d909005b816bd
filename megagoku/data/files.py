"""Samples from the files of a manifest: the dataset the packing loader reads when
`data.kind: manifest`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from megagoku.config.schema import DataConfig
from megagoku.data.decode import MediaReader, Target
from megagoku.data.manifest import MediaRecord, load_manifest


@dataclass
class FileSample:
    pixels: torch.Tensor  # (3, T, H, W) in [-1, 1]
    caption: str
    kind: str


def caption_of(record: MediaRecord) -> str:
    """The caption the model sees: Goku appends the clip's motion score when it has one, so that
    sampling can ask for more or less motion."""
    motion = record.scores.get("motion")
    return record.caption if motion is None else f"{record.caption} motion score: {motion:.1f}"


class ManifestDataset:
    """Endless and indexable like the shapes set: index i is record order[i % n] of epoch i // n,
    the order a permutation seeded by (data.seed, epoch). Every sample is decoded to the data
    section's size; a file that cannot serve gives None (the reader warned and counted it, the
    loader skips the index)."""

    def __init__(self, cfg: DataConfig, device: str = "cpu"):
        self.cfg = cfg
        self.records = load_manifest(cfg.manifest)
        self.reader = MediaReader(device, cfg.decode_backend)
        self._epoch, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> MediaRecord:
        epoch, position = divmod(index, len(self.records))
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.records))
            self._epoch = epoch
        return self.records[int(self._order[position])]

    def __getitem__(self, index: int) -> Optional[FileSample]:
        record = self.record(index)
        cfg = self.cfg
        frames = 1 if record.kind == "image" else cfg.frames
        pixels = self.reader.read(record.path, record.kind,
                                  Target(cfg.height, cfg.width, frames, cfg.fps))
        if pixels is None:
            return None
        return FileSample(pixels, caption_of(record), record.kind)
