"""The save-failed path, for every file a run writes while it trains: checkpoints, metrics.jsonl,
TensorBoard events, samples and evaluation outputs.

A full disk, an exceeded quota or an I/O error while writing one of them (`DISK_ERRNOS`) is not a
crash: the write is given up with a warning, training goes on (the last committed checkpoint is
untouched: a checkpoint is committed atomically, and logs are only appended to), and the next
write of that output tries again, so a disk that is cleaned up in time costs nothing but the lost
lines. After `checkpoint.max_write_failures` failures in a row of one output the run stops with
one line (`RunWriteError`, exit 2: retrying the same full disk cannot help). Any other error is a
bug and is raised as it is.

The trainer defers the stop (`deferred=True`): it reads `exhausted` in its per-step stop
decision, which every rank takes together (a checkpoint can fail on any rank); a one-process
user (the VAE trainer) gets the error raised at the failing write.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from typing import Callable, Optional, TypeVar

from megagoku.train.checkpoint import CheckpointError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors of the storage, not of the program: full, over quota, failing, read-only, a file over
# the size limit (RLIMIT_FSIZE).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})


class RunWriteError(CheckpointError):
    """Writes to the run dir kept failing: the run stops (its last committed checkpoint is
    valid)."""


def is_disk_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_ERRNOS


class RunWrites:
    """Counts the failed writes of each output (`what`: "metrics", "tensorboard", "samples",
    "checkpoint", ...); a success resets its count."""

    def __init__(self, max_failures: int = 3, deferred: bool = False):
        self.max_failures, self.deferred = max_failures, deferred
        self.in_a_row: Counter[str] = Counter()
        self.total = 0  # failures over the run (a metric)
        self.exhausted: Optional[str] = None  # the one line to stop with

    def attempt(self, what: str, write: Callable[[], T]) -> Optional[T]:
        """`write()`'s result; None when it failed on the storage (counted, warned)."""
        try:
            result = write()
        except OSError as e:
            if not is_disk_error(e):
                raise
            self.failed(what, f"{type(e).__name__}: {e}")
            return None
        self.succeeded(what)
        return result

    def succeeded(self, what: str) -> None:
        self.in_a_row[what] = 0

    def failed(self, what: str, error: str, warn: bool = True) -> None:
        """One failed write of `what` (`warn=False`: its writer already said why)."""
        self.in_a_row[what] += 1
        self.total += 1
        count = self.in_a_row[what]
        if warn:
            log.warning("%s not written (%s); training goes on, the last committed checkpoint "
                        "stays valid; tried again at the next write (%d of %d failures in a "
                        "row)", what, error, count, self.max_failures)
        if count >= self.max_failures and self.exhausted is None:
            self.exhausted = (f"{what}: {count} writes in a row failed (last: {error}); "
                              "stopped: free space on the run dir's disk, then resume with "
                              "--resume auto")
            if not self.deferred:
                raise RunWriteError(self.exhausted)
