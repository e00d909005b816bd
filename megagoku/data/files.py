"""Samples from the files of a manifest: the dataset the packing loader reads when
`data.kind: manifest`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megagoku.config.schema import DataConfig
from megagoku.data.decode import MediaReader, Target
from megagoku.data.manifest import MediaRecord, load_manifest
from megagoku.data.order import SampleOrder, target_index


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
    """Endless and indexable like the shapes set: index i is the record `SampleOrder` picks
    (a permutation per epoch, or images and videos mixed at data.image_fraction). Every sample is
    decoded to its record's target size (data.tiers, else the data section's size); a file that
    cannot serve gives None (the reader warned and counted it, the loader skips the index)."""

    def __init__(self, cfg: DataConfig, device: str = "cpu"):
        self.cfg = cfg
        # Refuses a missing DALI first. DALI decodes the files of one read request together.
        self.reader = MediaReader(device, cfg.decode_backend, dali_batch=cfg.read_batch,
                                  root=cfg.root)
        self.records = load_manifest(cfg.manifest)
        self.order = SampleOrder([r.kind for r in self.records], cfg.image_fraction, cfg.seed,
                                 str(cfg.manifest))

    def __len__(self) -> int:
        return len(self.records)

    def target(self, position: int) -> Target:
        record = self.records[position]
        frames, height, width, _ = self.cfg.targets(record.kind)[
            target_index(self.cfg, record.kind, position)]
        return Target(height, width, frames, self.cfg.fps)

    def load(self, position: int) -> Optional[FileSample]:
        """The sample of manifest record `position` (not a stream index), or None."""
        record = self.records[position]
        pixels = self.reader.read(record.path, record.kind, self.target(position))
        if pixels is None:
            return None
        return FileSample(pixels, caption_of(record), record.kind)

    def record(self, index: int) -> MediaRecord:
        return self.records[self.order.position(index)]

    def describe(self, index: int) -> str:
        return str(self.record(index).path)

    def __getitem__(self, index: int) -> Optional[FileSample]:
        return self.load(self.order.position(index))

    def get_many(self, indices: list[int]) -> list[Optional[FileSample]]:
        """`[self[i] for i in indices]`, the files DALI decodes read as one batch."""
        positions = [self.order.position(i) for i in indices]
        records = [self.records[p] for p in positions]
        pixels = self.reader.read_many([(r.path, r.kind, self.target(p))
                                        for r, p in zip(records, positions)])
        return [None if x is None else FileSample(x, caption_of(r), r.kind)
                for x, r in zip(pixels, records)]
