"""One training step after its loss: backward, clipping and the optimizer step, the LR schedule,
the EMA. Every trainer of the project takes its steps through `Update` (the Transformer's over
any layout, the VAE's and the RF-vs-DDPM ablation's on one process), so that clipping, the
skipped update on a non-finite gradient norm, the schedule and the EMA's warm-up are one code.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from megagoku.optim.ema import EMA
from megagoku.config.schema import ZERO_BUCKET_ELEMENTS
from megagoku.parallel.engine import TrainEngine


class Update:
    """`schedule(step)` scales the optimizer's base rate (torch's LambdaLR; None: constant);
    `ema` follows every applied update. The engine (`parallel.engine.TrainEngine`: DeepSpeed ZeRO
    on several ranks, a plain torch step on one) is built last: under ZeRO-3 it partitions the
    parameters, so the EMA and any restored weights must exist before."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                 schedule: Optional[Callable[[int], float]] = None, ema: Optional[EMA] = None,
                 zero_stage: int = 0, use_deepspeed: Optional[bool] = None,
                 bucket_elements: int = ZERO_BUCKET_ELEMENTS):
        self.model, self.optimizer, self.ema = model, optimizer, ema
        self.scheduler = None if schedule is None else \
            torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.engine = TrainEngine(model, optimizer, zero_stage, grad_clip, use_deepspeed,
                                  bucket_elements)

    @property
    def lr(self) -> float:
        """The rate the next optimizer step uses."""
        return self.engine.lr

    @property
    def applied_non_finite_update(self) -> bool:
        """The last step applied an update despite a non-finite gradient norm (DeepSpeed does):
        only a rollback can undo it."""
        return self.engine.applied_non_finite_update

    def backward(self, loss: torch.Tensor, accumulate: bool = False) -> None:
        """Gradients of `loss`; `accumulate` adds them to those of an earlier backward of the
        same step (one process: e.g. the VAE's one pass per sample shape)."""
        self.engine.backward(loss, accumulate)

    def step(self) -> float:
        """Clip and step; returns the gradient norm before clipping (no update when it is not
        finite, except under DeepSpeed: see `applied_non_finite_update`)."""
        return self.engine.step()

    def finish(self, applied: bool = True) -> None:
        """The end of a step: the schedule moves on whether or not the update was applied (it
        follows the step count); the EMA follows only an applied update."""
        if self.scheduler is not None:
            self.scheduler.step()
        if applied and self.ema is not None:
            self.ema.update(self.model)

    def __call__(self, loss: torch.Tensor) -> float:
        """A whole step for `loss`; returns the gradient norm."""
        self.backward(loss)
        norm = self.step()
        self.finish()
        return norm
