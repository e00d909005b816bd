"""AdamW, the learning-rate schedule and the update over the process grid, with their part of
the checkpoint (the moments as tensors, the step count, hyper-parameters and schedule as JSON)."""

from __future__ import annotations

import torch

from megagoku.config import TrainingConfig
from megagoku.optim import Update, adamw, warmup_cosine
from megagoku.train.checkpoint import CheckpointReader, ModelDirReader
from megagoku.train.components.model import TrainedModel
from megagoku.train.train_state import optimizer_meta, restore_optimizer, restore_optimizer_meta


class Optimization:
    """Built after the model's weights are in place: the engine (DeepSpeed under ZeRO or on
    several ranks) wraps the model and optimizer when `Update` is made."""

    def __init__(self, trained: TrainedModel, config: TrainingConfig):
        tcfg = config.train
        self.model = trained.model
        self.optimizer = adamw(self.model.parameters(), lr=tcfg.lr, betas=tcfg.betas,
                               weight_decay=tcfg.weight_decay)
        self.update = Update(self.model, self.optimizer, tcfg.grad_clip,
                             warmup_cosine(tcfg.warmup_steps, tcfg.steps, tcfg.min_lr_ratio),
                             trained.ema, config.parallel.zero_stage,
                             bucket_elements=config.parallel.zero_bucket_elements)
        self.scheduler = self.update.scheduler

    def load_moments(self, reader: CheckpointReader | ModelDirReader) -> None:
        """AdamW's moments and step count from a checkpoint (each rank writes its own fragment
        under ZeRO): all a new stage takes (`checkpoint.init_optimizer`; it keeps its own
        learning rate and schedule), and the tensor half of a resume."""
        restore_optimizer(self.model, self.update.engine, reader)

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(),
                "optimizer": optimizer_meta(self.optimizer)}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run's hyper-parameters, schedule position and learning rate, and
        DeepSpeed's step count (the moments come back with `load_moments`)."""
        restore_optimizer_meta(self.optimizer, self.scheduler, state["optimizer"],
                               state["scheduler"])
        self.update.engine.restore_progress(int(state["step"]))
