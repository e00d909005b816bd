"""Generation during training, the common part of the trainer's samples (`train/samples.py`) and
evaluations (`evaluation/periodic.py`): every `every` steps rank 0 generates with the EMA
weights, on a copy of the model built on first use and loaded with those weights each time.

Training is left exactly as it was: the copy is built with the global random state saved and
restored (its initialisation draws nothing from training's RNG), generation draws its noise from
its own seeded generators, and the training model, its optimizer and the data are not touched;
a run with samples or evaluations ends bit-identical to one without. It needs the whole model on
one rank (tensor_parallel = ulysses = 1, and no ZeRO-3 over several ranks: the EMA is partitioned
as the weights are); other layouts work on their checkpoints instead.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

import torch

from megagoku.config import TrainingConfig
from megagoku.inference.generate import Generator
from megagoku.models import TextEncoder, build_model
from megagoku.parallel import collectives

log = logging.getLogger(__name__)


class PeriodicGeneration(ABC):
    """`due(step)`, then `self(step, weights)` with the EMA state dict of the whole model.
    `off_message`: the warning that turns it off under a layout that splits the model."""

    def __init__(self, config: TrainingConfig, run_dir: Path, text_encoder: TextEncoder,
                 device: torch.device, every: int, off_message: str):
        self.config, self.run_dir = config, Path(run_dir)
        self.text_encoder, self.device = text_encoder, device
        self.every = every
        self.generator: Optional[Generator] = None
        # The EMA is sharded as the weights are: TP pieces, ZeRO-3 partitions (rank 0 alone
        # cannot gather them).
        split = config.parallel.model_parallel_size > 1 or (
            config.parallel.zero_stage == 3 and collectives.is_started()
            and collectives.world_size() > 1)
        if self.every and split:
            log.warning(off_message)
            self.every = 0

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def generator_with(self, weights: dict[str, torch.Tensor]) -> Generator:
        """The generator on the copy of the model, loaded with `weights`."""
        if self.generator is None:
            with torch.random.fork_rng(devices=[]):  # init draws must not move training's RNG
                copy = build_model(self.config.model).to(self.device).eval()
                self.generator = Generator(self.config, copy, self.text_encoder)
        self.generator.model.load_weights(weights)
        return self.generator

    def __call__(self, step: int, weights: dict[str, torch.Tensor]) -> Any:
        return self.run(step, self.generator_with(weights))

    @abstractmethod
    def run(self, step: int, generator: Generator) -> Any:
        """Generate (and write, and log) for `step`."""
