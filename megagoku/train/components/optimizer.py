"""AdamW, the learning-rate schedule and the update over the process grid, with their part of
the checkpoint (the moments as tensors, the step count, hyper-parameters and schedule as JSON)."""

from __future__ import annotations

import torch

from megagoku.config import TrainingConfig
from megagoku.optim import Update, warmup_cosine
from megagoku.train.checkpoint import CheckpointReader, ModelDirReader
from megagoku.train.components.model import TrainedModel
from megagoku.train.train_state import optimizer_meta, restore_optimizer


class Optimization:
    """Built after the model's weights are in place: the engine (DeepSpeed under ZeRO or on
    several ranks) wraps the model and optimizer when `Update` is made."""

    def __init__(self, trained: TrainedModel, config: TrainingConfig):
        tcfg = config.train
        self.model = trained.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tcfg.lr, betas=tcfg.betas,
                                           weight_decay=tcfg.weight_decay)
        self.update = Update(self.model, self.optimizer, tcfg.grad_clip,
                             warmup_cosine(tcfg.warmup_steps, tcfg.steps, tcfg.min_lr_ratio),
                             trained.ema, config.parallel.zero_stage)
        self.scheduler = self.update.scheduler

    def load_moments(self, reader: CheckpointReader | ModelDirReader) -> None:
        """AdamW's moments, step count and hyper-parameters from a checkpoint (each rank writes
        its own fragment under ZeRO)."""
        restore_optimizer(self.model, self.optimizer, reader)

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(),
                "optimizer": optimizer_meta(self.optimizer)}

    def load_state_dict(self, state: dict) -> None:
        """The schedule's position (the optimizer's JSON state comes back with its moments)."""
        self.scheduler.load_state_dict(state["scheduler"])
