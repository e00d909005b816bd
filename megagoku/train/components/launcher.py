"""What `megagoku launch` reads of a running trainer, through files its environment names:
progress beats (each rank's, for hang detection; node-local, `launch/heartbeat.py`) and events
(rank 0's: started, resumed, anomalies, committed checkpoints). Without a launcher both are
off."""

from __future__ import annotations

from pathlib import Path

from megagoku.launch import heartbeat
from megagoku.launch.events import EventLog


class LauncherLink:
    def __init__(self, rank: int):
        self.events = EventLog.from_env() if rank == 0 else None

    def beat(self, step: int) -> None:
        """A training step finished (the other phases report through `launch.heartbeat`)."""
        heartbeat.progress("train", step=step)

    def event(self, name: str, **fields) -> None:
        if self.events is not None:
            self.events.log(name, **fields)

    def checkpoint_committed(self, step: int, path: Path) -> None:
        """The checkpointer's commit callback (rank 0, in the writer thread)."""
        self.event("checkpoint_committed", step=step, path=str(path))
