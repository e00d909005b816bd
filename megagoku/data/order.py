"""The order samples are drawn in: an endless stream index -> a record position, seeded and
random-access (index i never depends on having read i - 1), so a loader can start anywhere.

`image_fraction=None` walks the records in a fresh permutation per epoch. A number mixes the
modalities at that ratio: each modality has its own endless stream of per-epoch permutations,
and index i belongs to the image stream when floor((i+1)f + u) > floor(i f + u) (a seeded phase
u), so every window of n indices holds n*f images up to one, and the count of images before i is
a closed form. A stage config asks for 30% images whatever the manifest holds.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from megagoku.config.schema import DataConfig


class SampleOrder:
    def __init__(self, kinds: Sequence[str], image_fraction: Optional[float], seed: int,
                 source: str = "the data"):
        self.seed = seed
        self.fraction = image_fraction
        if image_fraction is None:
            self.streams = {"all": np.arange(len(kinds))}
        else:
            self.streams = {k: np.array([i for i, kk in enumerate(kinds) if kk == k], dtype=np.int64)
                            for k in ("image", "video")}
            for kind, wanted in (("image", image_fraction > 0), ("video", image_fraction < 1)):
                if wanted and len(self.streams[kind]) == 0:
                    raise ValueError(f"data.image_fraction: {image_fraction} asks for {kind}s, "
                                     f"but {source} holds none")
            self.phase = float(np.random.default_rng([seed, 1]).random())
        if len(kinds) == 0:
            raise ValueError(f"{source} holds no samples")
        self._perms: dict[tuple[str, int], np.ndarray] = {}

    def _images_before(self, index: int) -> int:
        return math.floor(index * self.fraction + self.phase)  # phase < 1: 0 before index 0

    def kind_and_rank(self, index: int) -> tuple[str, int]:
        """Which stream index `index` draws from, and its rank in that stream."""
        if self.fraction is None:
            return "all", index
        before = self._images_before(index)
        if self._images_before(index + 1) > before:
            return "image", before
        return "video", index - before

    def position(self, index: int) -> int:
        stream, rank = self.kind_and_rank(index)
        members = self.streams[stream]
        epoch, offset = divmod(rank, len(members))
        key = (stream, epoch)
        perm = self._perms.get(key)
        if perm is None:
            # The unmixed stream keeps the seeding the loader always had: (seed, epoch).
            salt = [] if stream == "all" else [2 + ("image", "video").index(stream)]
            perm = np.random.default_rng([self.seed, *salt, epoch]).permutation(len(members))
            self._perms = {k: v for k, v in self._perms.items() if k[0] != stream}
            self._perms[key] = perm
        return int(members[perm[offset]])


def target_index(cfg: DataConfig, kind: str, position: int) -> int:
    """Which of `cfg.targets(kind)` record `position` is drawn at: by weight, seeded by
    (seed, position), the same on every run and in the latent cache."""
    weights = np.array([w for *_, w in cfg.targets(kind)], dtype=np.float64)
    if len(weights) == 1:
        return 0
    return int(np.random.default_rng([cfg.seed, 7, position]).choice(len(weights),
                                                                      p=weights / weights.sum()))
