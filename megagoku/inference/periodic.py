"""Generation during training, the common part of the trainer's samples (`train/samples.py`) and
evaluations (`evaluation/periodic.py`): every `every` steps rank 0 generates with the EMA
weights, on a copy of the model built on first use and loaded with those weights each time.

Every layout: when one is due (`generation_due`, the same answer on every rank), every rank takes
part in gathering the EMA one logical tensor at a time (`TrainedModel.ema_tensors`: TP pieces and
ZeRO-3 partitions put together; under Ulysses and plain DP the EMA is whole on every rank); rank 0
copies each into its copy of the model (`take`), the other ranks drop each at once, so no rank
but rank 0 ever holds the whole model, and rank 0 holds it once, in the copy. The copy is a
one-process model whatever the grid (built and run under `parallel.state.alone`: whole layers,
no collective call), so rank 0 generates while the others go on training.

Training is left exactly as it was: the copy is built with the global random state saved and
restored (its initialisation draws nothing from training's RNG), generation draws its noise from
its own seeded generators, and the training model, its optimizer and the data are not touched;
a run with samples or evaluations ends bit-identical to one without.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

import torch

from megagoku.config import TrainingConfig
from megagoku.inference.generate import Generator
from megagoku.models import TextEncoder, build_model
from megagoku.parallel import alone
from megagoku.parallel.weights import WeightsMismatch


def generation_due(config: TrainingConfig, step: int) -> bool:
    """Whether samples or an evaluation fall on `step`: asked on every rank, since every rank
    takes part in gathering the EMA for them (rank 0 alone generates)."""
    return any(every > 0 and step % every == 0
               for every in (config.sample.every, config.eval.every))


class PeriodicGeneration(ABC):
    """`due(step)`; then each tensor of the whole model's EMA state, `take(name, tensor)`, then
    `self(step)` generates with them."""

    def __init__(self, config: TrainingConfig, run_dir: Path, text_encoder: TextEncoder,
                 device: torch.device, every: int):
        self.config, self.run_dir = config, Path(run_dir)
        self.text_encoder, self.device = text_encoder, device
        self.every = every
        self.generator: Optional[Generator] = None
        self.tensors: dict[str, torch.Tensor] = {}  # the copy's, by name
        self.taken: set[str] = set()  # since the last generation

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def copy(self) -> Generator:
        """The generator on the copy of the model, built on first use."""
        if self.generator is None:
            # init draws must not move training's RNG; a one-process model whatever the grid
            with torch.random.fork_rng(devices=[]), alone():
                copy = build_model(self.config.model).to(self.device).eval()
            self.generator = Generator(self.config, copy, self.text_encoder)
            self.tensors = copy.weights()
        return self.generator

    @torch.no_grad()
    def take(self, name: str, whole: torch.Tensor) -> None:
        """Copy the whole tensor `name` into the copy of the model (the caller may drop it)."""
        self.copy()
        target = self.tensors.get(name)
        if target is None:
            raise WeightsMismatch(f"{name}: the sampling copy of the model has no such tensor")
        if target.shape != whole.shape:
            raise WeightsMismatch(f"{name} is {list(whole.shape)} but the sampling copy of the "
                                  f"model holds {list(target.shape)}")
        target.copy_(whole)
        self.taken.add(name)

    def __call__(self, step: int) -> Any:
        """Generate for `step` with the tensors taken since the last time: every tensor of the
        model, none missing."""
        generator = self.copy()
        missing = sorted(set(self.tensors) - self.taken)
        self.taken = set()
        if missing:
            raise WeightsMismatch(f"{len(missing)} tensors of the sampling copy of the model were "
                                  f"not given: {missing[:4]}")
        with alone():  # the copy's forward passes talk to no other rank
            return self.run(step, generator)

    @abstractmethod
    def run(self, step: int, generator: Generator) -> Any:
        """Generate (and write, and log) for `step`."""
