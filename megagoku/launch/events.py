"""The run's event log: one JSON object per line (`time`, `event`, `node`, `launch`, fields),
written by the launcher (launch, start, failure with rank and exit code, hang, restart, stop, end)
and by rank 0 of the workers (resumed at a step, checkpoint committed, finished), so the log tells
what happened and when.

One file per node, `RUN_DIR/events/<node>.jsonl`: a multi-node launch has one launcher per node,
and appends from several machines to one file on a shared filesystem are not atomic (NFS emulates
O_APPEND per client); appends of one line by processes of one node are. `read_events` merges the
files by time (and an `events.jsonl` of older versions). `MEGAGOKU_EVENT_LOG` names the node's
file in the workers' environment, `MEGAGOKU_LAUNCH_ID` the launch their events belong to.

`time_lost` reads the log back: for every failure, the training since the last commit (redone
after the restart) plus the time until the next attempt resumed."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Optional

ENV = "MEGAGOKU_EVENT_LOG"
LAUNCH_ENV = "MEGAGOKU_LAUNCH_ID"
# Which node wrote an event: Slurm's name for it where there is one (several emulated nodes can
# share a host name), else the host name.
NODE = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
LEGACY_FILE = "events.jsonl"


def node_file(run_dir: str | Path, node: str = NODE) -> Path:
    return Path(run_dir) / "events" / (re.sub(r"[^A-Za-z0-9._-]", "_", node) + ".jsonl")


class EventLog:
    def __init__(self, path: str | Path, launch: Optional[str] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.launch = launch

    @classmethod
    def from_env(cls) -> Optional["EventLog"]:
        path = os.environ.get(ENV)
        return cls(path, os.environ.get(LAUNCH_ENV)) if path else None

    def log(self, event: str, **fields) -> None:
        record = {"time": round(time.time(), 3), "event": event, "node": NODE}
        if self.launch:
            record["launch"] = self.launch
        record.update(fields)
        # One write of one line in append mode: lines of this node's writers never interleave.
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return read_file(self.path)


def read_file(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line of a writer that was killed mid-write
        if isinstance(record, dict) and "event" in record and "time" in record:
            out.append(record)
    return out


def read_events(run_dir: str | Path) -> list[dict]:
    """Every node's events of the run, in time order (ties keep each file's order)."""
    run_dir = Path(run_dir)
    files = [run_dir / LEGACY_FILE, *sorted((run_dir / "events").glob("*.jsonl"))]
    events = [e for path in files for e in read_file(path)]
    return sorted(events, key=lambda e: e["time"])


def of_launch(events: list[dict], launch: str) -> list[dict]:
    return [e for e in events if e.get("launch") == launch]


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
