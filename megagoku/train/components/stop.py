"""When a run stops before its last step: a stop signal on any rank, or `train.max_minutes` of
training time. Every rank takes the same decision at the same step (one collective per step)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Optional

import torch

from megagoku.parallel import collectives

log = logging.getLogger(__name__)


class StopSignals:
    """SIGUSR1 / SIGTERM (a Slurm preemption, a launcher stopping the job) and SIGINT (Ctrl-C)
    ask for a checkpoint and a clean exit at the end of the current step, not an abrupt death.
    A second SIGINT exits at once, without saving (the last committed checkpoint stays valid)."""

    NAMES = ("SIGUSR1", "SIGTERM", "SIGINT")
    INTERRUPTED = 130  # the shell's code for a death by SIGINT

    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if name == "SIGINT" and self.received == "SIGINT":
            print("second interrupt: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(self.INTERRUPTED)
        self.received = name
        log.warning("%s received: checkpointing at the end of this step, then exiting%s", name,
                    " (Ctrl-C again to exit at once, without saving)" if name == "SIGINT" else "")

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass
class Stop:
    # signal (SIGUSR1/SIGTERM/SIGINT: requeue me) | max_minutes | write_failures (stop for good)
    reason: str
    why: str  # for the log


class StopConditions:
    """Installs the signal handlers when made; `restore()` gives the previous ones back."""

    def __init__(self, max_minutes: float, device: torch.device):
        self.max_minutes, self.device = max_minutes, device
        self.signals = StopSignals()

    def check(self, elapsed_s: float, write_failures: Optional[str] = None) -> Optional[Stop]:
        """Whether to stop after this step (collective). `write_failures`: this rank's one line
        when its writes to the run dir kept failing (`train/run_writes.py`)."""
        out_of_time, signalled, failing = collectives.any_rank(
            [self.max_minutes > 0 and elapsed_s > 60 * self.max_minutes,
             self.signals.received is not None, write_failures is not None], self.device)
        if failing:
            return Stop("write_failures", write_failures or "writes to the run dir kept failing "
                        "on another rank; stopped (its log says which)")
        if signalled:
            return Stop("signal", self.signals.received or "a stop signal on another rank")
        if out_of_time:
            return Stop("max_minutes", f"train.max_minutes={self.max_minutes} reached")
        return None

    def restore(self) -> None:
        self.signals.restore()
