"""The two ways reading data fails: one file (`DecodeError`, skipped and counted) or the data as a
whole (`DataError`, which stops the run with one line)."""

from __future__ import annotations

from pathlib import Path


class DecodeError(Exception):
    """A file that cannot give the sample asked of it. `reason` is the counter it is skipped
    under: missing, empty, unreadable, no_video, not_video, undecodable, too_short, bad_image,
    error (anything else that went wrong reading it)."""

    def __init__(self, path: Path, reason: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.reason = reason


class DataError(RuntimeError):
    """The data cannot feed the run at all (every file unreadable, a data worker stuck or
    dead); the message is the one line the command prints."""
