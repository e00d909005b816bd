"""Rate and ETA of long work, and how they are written: one measure for every progress line
(training, conversion, sampling, curation), each of which formats its own units around it."""

from __future__ import annotations

import math
import time


def format_duration(seconds: float) -> str:
    """12m05s, 1h02m03s; "?" when unknown (no rate yet)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class RateMeter:
    """Work done out of `total` since the meter started: its rate per second and the ETA."""

    def __init__(self, total: float):
        self.total = total
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def measure(self, done: float) -> tuple[float, float]:
        """(rate per second, seconds left; inf while the rate is 0)."""
        elapsed = self.elapsed()
        rate = done / elapsed if elapsed > 0 else 0.0
        return rate, (self.total - done) / rate if rate > 0 else float("inf")

    def eta(self, done: float) -> str:
        return format_duration(self.measure(done)[1])
