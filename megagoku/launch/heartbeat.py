"""Heartbeats: each training rank rewrites `rank-<global rank>.json` (pid, step, time) in
`MEGAGOKU_HEARTBEAT_DIR` after every step; the launcher reads their ages. A rank whose file is
older than the heartbeat timeout has stopped making progress (a hang in a collective, a stuck
filesystem, a dead GPU) even though its process is alive, which no exit code would show."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional

ENV = "MEGAGOKU_HEARTBEAT_DIR"


def heartbeat_file(directory: Path, rank: int) -> Path:
    return Path(directory) / f"rank-{rank:05d}.json"


class Heartbeat:
    """The worker side."""

    def __init__(self, directory: str | Path, rank: int):
        self.path = heartbeat_file(Path(directory), rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, rank: int) -> Optional["Heartbeat"]:
        directory = os.environ.get(ENV)
        return cls(directory, rank) if directory else None

    def beat(self, step: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "step": step, "time": time.time()}))
        os.replace(tmp, self.path)  # a reader sees the old beat or the new one, never half


def read_beat(directory: Path, rank: int) -> Optional[dict]:
    try:
        return json.loads(heartbeat_file(directory, rank).read_text())
    except (OSError, ValueError):
        return None


class HeartbeatMonitor:
    """The launcher side: which of its ranks have gone quiet."""

    def __init__(self, directory: str | Path, timeout_s: float, startup_timeout_s: float):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.started = time.time()

    def reset(self, ranks: Iterable[int]) -> None:
        """A new attempt: forget the last one's beats."""
        for rank in ranks:
            heartbeat_file(self.directory, rank).unlink(missing_ok=True)
        self.started = time.time()

    def quiet(self, ranks: Iterable[int], now: Optional[float] = None) -> dict[int, str]:
        """rank -> why, for the ranks past their timeout: `heartbeat_timeout` since the last
        beat, or `startup_timeout` since the attempt started for a rank that never beat."""
        now = time.time() if now is None else now
        out = {}
        for rank in ranks:
            beat = read_beat(self.directory, rank)
            if beat is None:
                if now - self.started > self.startup_timeout_s:
                    out[rank] = f"no heartbeat {now - self.started:.0f} s after start"
            elif now - beat["time"] > self.timeout_s:
                out[rank] = (f"no heartbeat for {now - beat['time']:.0f} s "
                             f"(last at step {beat['step']})")
        return out
