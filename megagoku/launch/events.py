"""The run's event log: one JSON object per line (`time`, `event`, fields), appended by the
launcher (start, failure with rank and exit code, hang, restart, stop, end) and by rank 0 of the
workers (resumed at a step, checkpoint committed), so one file tells what happened and when.
`MEGAGOKU_EVENT_LOG` names it in the workers' environment.

`time_lost` reads it back: for every failure, the training since the last commit (redone after
the restart) plus the time until the next attempt resumed."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

ENV = "MEGAGOKU_EVENT_LOG"
# Which node wrote an event: Slurm's name for it where there is one (several emulated nodes can
# share a host name), else the host name. A multi-node launch has one launcher per node, all
# appending to the same file.
NODE = os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class EventLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls) -> Optional["EventLog"]:
        path = os.environ.get(ENV)
        return cls(path) if path else None

    def log(self, event: str, **fields) -> None:
        record = {"time": round(time.time(), 3), "event": event, "node": NODE, **fields}
        # One write of one line in append mode: lines of several writers never interleave.
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a writer that was killed mid-write
        return out


def time_lost(events: list[dict]) -> dict:
    """Seconds lost to failures: work redone (from the last commit, or the attempt's start, to
    the failure) and downtime (from the failure to the next resume). A failure with no later
    resume counts its redone work only; failures before a resume (a restart that fails again)
    are each counted, their time once."""
    redone = downtime = 0.0
    failures = 0
    last_progress: Optional[float] = None  # the last point training state was safe on disk
    failed_at: Optional[float] = None
    for e in events:
        kind = e["event"]
        if kind in ("resumed", "training_started"):
            if failed_at is not None:
                downtime += e["time"] - failed_at
                failed_at = None
            last_progress = e["time"]
        elif kind == "checkpoint_committed":
            last_progress = e["time"]
        elif kind in ("failure", "hang"):
            failures += 1
            if failed_at is None:  # a failure of the restart itself extends the same downtime
                failed_at = e["time"]
                if last_progress is not None:
                    redone += failed_at - last_progress
    return {"failures": failures, "redone_s": round(redone, 3), "downtime_s": round(downtime, 3),
            "lost_s": round(redone + downtime, 3)}


def failures_by_node(events: list[dict]) -> dict[str, int]:
    """Failures and hangs per node that reported them (launchers log their own workers')."""
    counts: dict[str, int] = {}
    for e in events:
        if e.get("event") in ("failure", "hang") and e.get("node"):
            counts[e["node"]] = counts.get(e["node"], 0) + 1
    return counts
