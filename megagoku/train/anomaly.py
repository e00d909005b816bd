"""Loss anomalies and the run's response (`train.anomaly_response`).

An anomaly is a non-finite loss, a non-finite gradient norm, or (with `train.spike_factor` > 0) a
loss above spike_factor x the mean of the last `train.spike_window` normal losses. The loss is
the pack's loss averaged over the data-parallel replicas, so every rank sees the same value and
takes the same decision without another collective.

- skip: the step's update is not applied (no backward or optimizer step, no EMA update; the
  pack and the step's random draws are consumed as usual, the LR schedule moves on).
- rollback: the run records the anomalous steps in `<run_dir>/skip_steps.json` and stops
  without saving; restarted with `--resume auto` (by `megagoku launch`, or by `megagoku train`
  itself on one process) it continues from the newest valid checkpoint and skips those steps'
  updates, so the same data cannot do the same damage. For damage that shows late (weights hurt
  a few steps before the loss shows it), `train.rollback_steps` skips that many steps up to the
  anomaly.
- stop: the run stops with an error naming the step.

A skip by either path leaves the same state: a run that skipped step s in-process and a run
told to skip step s end bit-identical. After `train.max_anomalies` anomalies the run stops.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Optional

log = logging.getLogger(__name__)

SKIP_FILE = "skip_steps.json"


class TrainingAnomaly(RuntimeError):
    """A loss anomaly the run will not go past (response stop, or too many anomalies)."""


class AnomalyDetector:
    """Judges each step's loss against the recent ones. Its window is part of the training state
    (saved in checkpoints), so that a resumed run judges as the uninterrupted one would."""

    def __init__(self, spike_factor: float, window: int):
        self.spike_factor = spike_factor
        self.recent: deque[float] = deque(maxlen=max(1, window))

    def judge(self, loss: float) -> Optional[str]:
        """Why this step's loss is an anomaly, or None."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if self.spike_factor > 0 and len(self.recent) == self.recent.maxlen:
            mean = sum(self.recent) / len(self.recent)
            if loss > self.spike_factor * mean:
                return (f"loss {loss:.4g} is {loss / mean:.3g}x the mean {mean:.4g} of the last "
                        f"{len(self.recent)} steps (train.spike_factor={self.spike_factor:g})")
        return None

    @staticmethod
    def judge_gradient(grad_norm: float) -> Optional[str]:
        return None if math.isfinite(grad_norm) else f"gradient norm is {grad_norm}"

    def accept(self, loss: float) -> None:
        """A normal step's loss joins the window."""
        self.recent.append(loss)

    def state_dict(self) -> dict:
        return {"recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.recent.clear()
        self.recent.extend(float(x) for x in state.get("recent", []))


def read_skip_steps(run_dir: Path) -> dict[int, str]:
    """step -> why, for the steps a rollback asked to skip."""
    path = Path(run_dir) / SKIP_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {int(step): str(why) for step, why in data["steps"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: steps: expected {{step: reason}}, cannot read it ({e})") from None


def add_skip_steps(run_dir: Path, steps: Iterable[int], why: str) -> dict[int, str]:
    """Record steps to skip (rank 0 only); written whole to a temporary file, then renamed."""
    path = Path(run_dir) / SKIP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    known = read_skip_steps(run_dir)
    for step in steps:
        known.setdefault(int(step), why)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"steps": {str(s): w for s, w in sorted(known.items())}},
                              indent=1) + "\n")
    tmp.replace(path)
    return known


class AnomalyPolicy:
    """The run's side of `train.anomaly_response`: which steps it was told to skip (a rollback's
    skip file, read by every rank so that all skip the same steps), the detector, the count of
    anomalies, and the response to one. `event(name, **fields)` reports to the launcher."""

    def __init__(self, tcfg, run_dir: Path, rank0: bool,
                 event: Callable[..., None] = lambda name, **fields: None):
        self.response, self.rollback_steps = tcfg.anomaly_response, tcfg.rollback_steps
        self.max_anomalies = tcfg.max_anomalies
        self.run_dir, self.rank0, self.event = Path(run_dir), rank0, event
        self.detector = AnomalyDetector(tcfg.spike_factor, tcfg.spike_window)
        self.skip_steps = read_skip_steps(run_dir)  # ValueError naming the file
        self.count = len(self.skip_steps)

    def told_to_skip(self, step: int) -> Optional[str]:
        """Why a rollback asked to skip this step's update, or None."""
        return self.skip_steps.get(step)

    def judge_loss(self, loss: float) -> Optional[str]:
        return self.detector.judge(loss)

    def judge_gradient(self, grad_norm: float) -> Optional[str]:
        return self.detector.judge_gradient(grad_norm)

    def accept(self, loss: float) -> None:
        self.detector.accept(loss)

    def respond(self, step: int, anomaly: str, update_applied: bool) -> bool:
        """Count the anomaly and act on it: raise TrainingAnomaly (response stop, or too many),
        or return whether the run must roll back (the skip file then names the steps to skip;
        a skip whose update is already in the weights, as DeepSpeed applies it, rolls back)."""
        self.count += 1
        response = self.response
        if response == "skip" and update_applied:
            response = "rollback"  # the update is in the weights already: undo it
        log.warning("step %d: %s; response: %s", step, anomaly, response)
        self.event("anomaly", step=step, why=anomaly, response=response)
        if response == "stop" or self.count > self.max_anomalies:
            why = "train.anomaly_response=stop" if response == "stop" else \
                f"{self.count} anomalous steps, more than train.max_anomalies=" \
                f"{self.max_anomalies}"
            raise TrainingAnomaly(f"{self.run_dir}: step {step}: {anomaly} ({why})")
        if response != "rollback":
            return False
        if self.rank0:
            add_skip_steps(self.run_dir, range(max(1, step - self.rollback_steps + 1), step + 1),
                           anomaly)
        return True

    def state_dict(self) -> dict:
        return {"anomaly": self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state.get("anomaly", {}))
