"""The model being trained and its EMA: one component, because where and how the model is built
decides where the EMA lives and how a checkpoint's weights are put back into both."""

from __future__ import annotations

import logging
import math
from typing import Iterator, Optional

import torch

from megagoku.config import TrainingConfig
from megagoku.config.schema import LEGACY_BLOCK
from megagoku.models.construct import build_initialised
from megagoku.optim import EMA
from megagoku.parallel.activation_checkpoint import apply_activation_checkpointing
from megagoku.parallel.weights import whole_shape
from megagoku.train.checkpoint import CheckpointReader, ModelDirReader
from megagoku.train.train_state import restore_weights

log = logging.getLogger(__name__)


def block_hint(reader: CheckpointReader | ModelDirReader, config: TrainingConfig) -> str:
    """What to set when a checkpoint holds another block than `config` builds: a checkpoint
    saved without the block keys holds megagoku's earlier block (LEGACY_BLOCK), and a run from
    it under a new config would otherwise see only shapes that differ."""
    saved = (getattr(reader, "config", None) or {}).get("model")
    if not isinstance(saved, dict):
        return ""
    block = {key: saved.get(key, LEGACY_BLOCK[key]) for key in LEGACY_BLOCK}
    ours = {key: getattr(config.model, key) for key in LEGACY_BLOCK}
    if block == ours:
        return ""
    name = "megagoku's earlier block" if block == LEGACY_BLOCK else "another block"
    sets = " ".join(f"--set model.{k}={str(v).lower()}" for k, v in block.items() if ours[k] != v)
    return f"the checkpoint holds {name}: {sets}; else "


class TrainedModel:
    """Built on `device` with only this rank's pieces ever allocated (its TP shard; under
    ZeRO-3 its partition of it, by DeepSpeed's zero.Init), initialised per logical tensor from
    `train.seed` (the same model on every layout: models/construct.py), then given a resumed
    checkpoint's weights and EMA (`reader`), or a new stage's starting weights (`init`: the EMA
    then starts from them), one tensor at a time into the shards, before DeepSpeed's engine
    exists; finally wrapped for activation checkpointing (`parallel.activation_checkpointing`).
    The EMA is sharded as the parameters are."""

    def __init__(self, config: TrainingConfig, device: torch.device,
                 reader: Optional[CheckpointReader] = None,
                 init: Optional[CheckpointReader | ModelDirReader] = None):
        decay = config.train.ema_decay
        self.model = build_initialised(config.model, device, config.train.seed,
                                       zero3=config.parallel.zero_stage == 3)
        self.ema = EMA(self.model, decay)
        if reader is not None:  # before DeepSpeed builds its ZeRO-1/2 partitions
            restore_weights(self.model, self.ema, reader, hint=block_hint(reader, config) + (
                "a resumed run continues the same model: resume with the checkpoint's model "
                "config, or start a new run from it with checkpoint.init_from"))
        elif init is not None:  # the next stage may add inputs (I2V) or change on purpose
            restore_weights(self.model, self.ema, init, fresh=self.model.new_input_weights(),
                            partial=config.checkpoint.partial_weights,
                            hint=block_hint(init, config) + (
                                "checkpoint.init_from of another model: set "
                                "checkpoint.partial_weights: true to load only what fits"))
        if init is not None:
            self.ema = EMA(self.model, decay)  # a new stage averages from its initial weights
        apply_activation_checkpointing(self.model.blocks,
                                       config.parallel.activation_checkpointing,
                                       config.parallel.activation_checkpoint_every)

    def parameter_count(self) -> int:
        """Parameters of the whole model (TP pieces and ZeRO-3 partitions counted whole)."""
        return sum(math.prod(whole_shape(p)) for p in self.model.parameters())

    def ema_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, whole tensor) of the whole model with the EMA in place of the parameters, one
        logical tensor at a time: what samples and evaluations during training use. Collective
        (TP pieces and ZeRO-3 partitions gathered): every rank iterates to the end; rank 0 keeps
        them in its copy of the model, the others drop each at once (under Ulysses and plain DP
        the EMA is whole on every rank and nothing is gathered or copied)."""
        return self.ema.wholes(self.model.weights())

    def state_dict(self) -> dict:
        return {"ema_updates": self.ema.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema.updates = int(state["ema_updates"])
