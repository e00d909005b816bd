"""The packs a training loop consumes, on its device, built ahead on a GPU.

`PackFeed` wraps a `PackingLoader`. With `ahead` = 0 (the CPU default) a pack is built when the
step asks for it: on two shared cores a second thread would only take them from the step. With
`ahead` >= 1 (the GPU default) a thread builds the next packs while the step runs: it takes the
samples the data workers decoded, encodes them (the VAE, on the GPU), packs them, pins the pack
and copies it to the device on a side CUDA stream (`non_blocking`); the step waits only on that
copy's event. Cached caption features travel with the pack.

Exact resume is kept: the loader's state (and its skip counts) are snapshotted after each pack is
built and handed out with it, so `state_dict()` is the state after the last pack the step took,
never one the thread has built ahead; after a resume those packs are built again.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megagoku.data.decode import DecodeStats
from megagoku.data.packing import PackedBatch, PackingLoader
from megagoku.data.workers import WAIT_SLICE_S


@dataclass
class _Ready:
    batch: PackedBatch
    event: Optional["torch.cuda.Event"]
    state: dict  # the loader's state once this pack had been built
    skipped: int
    stats: DecodeStats


def _pin(t: torch.Tensor) -> torch.Tensor:
    """Page-locked (a latent space that returns its latents on the GPU needs no copy)."""
    return t.pin_memory() if t.device.type == "cpu" else t


def _pinned(batch: PackedBatch) -> PackedBatch:
    return PackedBatch(_pin(batch.tokens), _pin(batch.positions), _pin(batch.cu_seqlens),
                       batch.grids, batch.captions, batch.kinds,
                       None if batch.texts is None else [_pin(t) for t in batch.texts])


def to_device(batch: PackedBatch, device: torch.device) -> PackedBatch:
    """The pack, its caption features included, on `device` (non-blocking copies)."""
    moved = batch.to(device)
    if batch.texts is not None:
        moved.texts = [t.to(device, non_blocking=True) for t in batch.texts]
    return moved


class PackFeed:
    """`next_pack()` -> the next PackedBatch on `device`; quacks like the PackingLoader it wraps
    for the trainer (`replica`, `state_dict`, `load_state_dict` before the first pack, `skipped`,
    `decode_stats`, `close`)."""

    def __init__(self, loader: PackingLoader, device: torch.device | str,
                 ahead: Optional[int] = None,
                 progress: Optional[Callable[[str], None]] = None):
        self.loader = loader
        self.device = torch.device(device)
        self.ahead = (1 if self.device.type == "cuda" else 0) if ahead is None else ahead
        self.progress = progress
        self._taken: Optional[_Ready] = None  # the last pack handed out
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.ahead))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stream = None

    @property
    def progress(self) -> Optional[Callable[[str], None]]:
        return self.loader.progress

    @progress.setter
    def progress(self, report: Optional[Callable[[str], None]]) -> None:
        self.loader.progress = report

    @property
    def replica(self) -> tuple[int, int]:
        return self.loader.replica

    @property
    def skipped(self) -> int:
        return self._taken.skipped if self._taken is not None else self.loader.skipped

    @property
    def decode_stats(self) -> DecodeStats:
        return self._taken.stats if self._taken is not None else self.loader.decode_stats

    def state_dict(self) -> dict:
        return dict(self._taken.state) if self._taken is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None or self._taken is not None:
            raise RuntimeError("PackFeed.load_state_dict after packs were built")
        self.loader.load_state_dict(state)

    def _build(self) -> _Ready:
        batch = self.loader.next_pack()
        ready = _Ready(batch, None, self.loader.state_dict(), self.loader.skipped,
                       self.loader.decode_stats.copy())
        if self.device.type == "cuda":
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._stream):
                ready.batch = to_device(_pinned(batch), self.device)
                ready.event = torch.cuda.Event()
                ready.event.record(self._stream)
        else:
            ready.batch = to_device(batch, self.device)
        return ready

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._build()
            except BaseException as e:  # noqa: BLE001 - handed to the step, which raises it
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def _next_ready(self) -> _Ready:
        if self.ahead == 0:
            return self._build()
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="megagoku-packs",
                                            daemon=True)
            self._thread.start()
        while True:
            try:
                item = self._queue.get(timeout=WAIT_SLICE_S)
                break
            except queue.Empty:
                if self.progress is not None:
                    self.progress("data")
        if isinstance(item, BaseException):
            raise item
        return item

    def next_pack(self) -> PackedBatch:
        ready = self._next_ready()
        if ready.event is not None:  # the copy was made on the side stream
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready.event)
            for t in (ready.batch.tokens, ready.batch.positions, ready.batch.cu_seqlens,
                      *(ready.batch.texts or [])):
                t.record_stream(current)
        self._taken = ready
        return ready.batch

    def close(self) -> None:
        """Stop the thread and the data workers."""
        self._stop.set()
        self.loader.close()  # a thread waiting on the workers wakes up and sees the stop
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
