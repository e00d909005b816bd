"""The run's randomness: the seed every rank builds the model from, and the generator of this
data-parallel replica (noise, times, dropouts); with this rank's part of the checkpoint (every
RNG it has, saved in its own part and put back on resume)."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from megagoku.train.checkpoint import CheckpointReader
from megagoku.train.train_state import replica_rng, rng_state, set_rng_state

log = logging.getLogger(__name__)


def seed_everything(seed: int, replica: int = 0) -> torch.Generator:
    """Every rank builds the same model from `seed`; the returned generator (noise, times,
    caption dropout) is shared by the ranks of one data-parallel replica and differs between
    replicas."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1 + 1000003 * replica)


class RandomStreams:
    """Seeds every RNG when made: make it before the model (its initial weights come from the
    global torch RNG)."""

    def __init__(self, seed: int, replica: int, replicas: int):
        self.replica, self.replicas = replica, replicas
        self.generator = seed_everything(seed, replica)

    def rank_state(self) -> dict:
        """This rank's every RNG, as JSON (a checkpoint keeps one per rank)."""
        return rng_state(self.generator, self.replica, self.replicas)

    def load(self, reader: CheckpointReader) -> None:
        """The RNGs a rank of this replica saved; after a change of DP size there is none, and
        every stream goes on from the seed (the run is no longer bit-exact)."""
        state = replica_rng(reader, self.replica, self.replicas)
        if state is not None:
            set_rng_state(state, self.generator)
        else:
            log.warning("%s was saved by another number of data-parallel replicas than this "
                        "run's %d: the weights, optimizer and data position carry over, the "
                        "random streams restart from the seed", reader.path, self.replicas)
