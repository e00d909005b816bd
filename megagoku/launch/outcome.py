"""A launch's outcome, decided from facts: what the agent saw the workers do, and what is on disk.

| outcome | exit | when |
|---|---|---|
| succeeded | 0 | every worker exited 0 and, for `train`, the final checkpoint it reported is committed (its `manifest.json` is there) |
| requeue | 75 | a stop signal, and a checkpoint of this launch committed after it: run again, it continues |
| stopped | 1 | a stop signal, and no checkpoint of this launch committed after it (the reason says what was lost) |
| failed | 1 | a crash, a hang, a config error, a deterministic start-up error, restarts used up, or workers that exited 0 without a committed final checkpoint |

"Committed" is read from the run dir (`checkpoints/step_N/manifest.json`, written last by the
commit), never taken from an exit code. Events are those of this launch only (`events.of_launch`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from megagoku.launch.exit_codes import REQUEUE


@dataclass
class Outcome:
    outcome: str  # succeeded | requeue | stopped | failed
    exit_code: int
    reason: str
    checkpoint: Optional[str] = None  # the checkpoint a next launch continues from
    step: Optional[int] = None  # its step

    def as_dict(self) -> dict:
        return asdict(self)


def is_committed(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def newest_committed(run_dir: Path) -> Optional[tuple[int, Path]]:
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", path.name)
        if m and is_committed(path):
            found.append((int(m.group(1)), path))
    return max(found) if found else None


def what_was_lost(run_dir: Path, last_step: Optional[int]) -> str:
    newest = newest_committed(run_dir)
    if last_step is None:
        where = f"; the run continues from {newest[1].name}" if newest else ""
        return f"no training step finished in this launch{where}"
    if newest is None:
        return f"steps 1-{last_step} are lost: no checkpoint is committed"
    if last_step > newest[0]:
        return (f"steps {newest[0] + 1}-{last_step} are lost; the run continues from "
                f"{newest[1].name}")
    return f"nothing trained is lost; the run continues from {newest[1].name}"


def decide(run_dir: Path, events: list[dict], *, succeeded: bool, failure: Optional[str],
           stop_signal: Optional[str], stop_time: Optional[float], trains: bool,
           last_step: Optional[int]) -> Outcome:
    """`events`: this launch's. `succeeded`: every worker exited 0 (in the last attempt).
    `failure`: the agent's reason for the last failed attempt. `stop_signal`/`stop_time`: the
    stop the launcher forwarded (when every rank exited 75 on a signal sent to them directly,
    "a signal to the workers" and the attempt's start). `trains`: the command is `train`, which
    must end with a committed checkpoint. `last_step`: the newest training step a heartbeat
    reported in this launch."""
    newest = newest_committed(run_dir)
    at = (str(newest[1]), newest[0]) if newest else (None, None)
    if stop_signal is not None and not succeeded:
        commits = [e for e in events if e["event"] == "checkpoint_committed"
                   and e["time"] >= (stop_time or 0) and is_committed(e.get("path", ""))]
        if commits:
            last = commits[-1]
            return Outcome("requeue", REQUEUE,
                           f"stopped by {stop_signal}; checkpoint {Path(last['path']).name} "
                           f"(step {last['step']}) committed after it: run again to continue",
                           last["path"], last["step"])
        return Outcome("stopped", 1, f"stopped by {stop_signal} before a checkpoint of this "
                       f"launch was committed: {what_was_lost(run_dir, last_step)}", *at)
    if not succeeded:  # (an attempt that failed before a successful one is no failure)
        why = failure or "the workers did not finish"
        return Outcome("failed", 1, f"{why}; {what_was_lost(run_dir, last_step)}", *at)
    if not trains:
        return Outcome("succeeded", 0, "every worker exited 0", *at)
    finished = [e for e in events if e["event"] == "finished"]
    if not finished:
        return Outcome("failed", 1, "the workers exited 0 but reported no final checkpoint; "
                       + what_was_lost(run_dir, last_step), *at)
    end = finished[-1]
    if not is_committed(end.get("checkpoint") or ""):
        return Outcome("failed", 1, f"the workers exited 0 but their final checkpoint "
                       f"{end.get('checkpoint')} is not committed on disk; "
                       + what_was_lost(run_dir, last_step), *at)
    reason = f"trained to step {end['step']} of {end.get('steps', end['step'])}"
    if end.get("stop_reason") == "max_minutes":
        reason += " (stopped at train.max_minutes)"
    return Outcome("succeeded", 0, f"{reason}; final checkpoint {Path(end['checkpoint']).name} "
                   "committed", end["checkpoint"], end["step"])
