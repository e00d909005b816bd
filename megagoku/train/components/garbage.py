"""Python's garbage collector during a run: out of the way of the steps, as in torchtitan
(`training.gc_freq`) and Megatron-LM (`--manual-gc`).

CPython's automatic collector runs whenever enough container objects were allocated, and its
oldest generation walks every object the process holds: ~540,000 of them once torch, megatron-core,
DeepSpeed and transformers are imported, before the run makes any. Measured on the resume
matrix's two-process runs, collections took 10% of a rank's time (1.7-2.0 s of 17-18 s), and at
Goku-2B's width the collector showed in every rank's profile. A run holds its set-up for its
whole length, and a step's garbage is freed by reference counting; the few cycles a step makes
(autograd, DeepSpeed's hooks) are young. So a run freezes what exists when it starts (the
imports: never walked again), turns the automatic collector off, and collects the young
generations itself every `train.gc_every` steps, the same step on every rank (a collection is a
pause: one rank's is every rank's wait in the next collective). `close()` gives the process its
collector back as it was: a process that trains more than once (the tests) ends each run as it
started, unfrozen (where the caller had frozen objects itself, they stay frozen: `gc.unfreeze`
cannot tell theirs from ours). `train.gc_every=0` leaves Python's automatic collector alone.
"""

from __future__ import annotations

import gc


class GarbageCollection:
    YOUNG = 1  # gc.collect's generation: 0 and 1, not the oldest

    def __init__(self, every: int):
        self.every = every
        self._was_enabled = gc.isenabled()
        self._was_frozen = gc.get_freeze_count() > 0
        if every > 0:
            gc.freeze()
            gc.disable()

    def step(self, step: int) -> None:
        """After `step`: the young generations collected when due."""
        if self.every > 0 and step % self.every == 0:
            gc.collect(self.YOUNG)

    def close(self) -> None:
        if self.every > 0:
            if not self._was_frozen:
                gc.unfreeze()
            if self._was_enabled:
                gc.enable()
            self.every = 0  # closed: a second close changes nothing
