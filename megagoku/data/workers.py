"""Reading samples in worker processes: torch's DataLoader over the packing loader's stream.

`StreamDataset` is a map-style dataset over this replica's stream index (index i is dataset
sample i * replicas + replica) that returns one decoded, resized sample, or None for a file that
cannot serve. `SampleReads` reads it in stream order through a DataLoader (`data.num_workers`
spawned processes, `data.prefetch_factor` requests in flight each, `data.read_batch` indices per
request, pinned memory on a GPU, workers kept for the run) starting at any point: the window a
checkpoint saved, then the next unread index. Only the packer's state is the loader's state:
what the workers had read ahead and not handed over is read again after a resume.

Workers are spawned, not forked: a fork of the training process would start with its model,
optimizer and text encoder in its address space (and a copy of its OpenMP and DALI threads' state),
so each worker would count the trainer's memory as its own; a spawned one holds torch, the
decoders and the manifest.

Failures: a file that cannot be read is a counted skip inside the worker; its counts travel with
the sample (`Fetched.stats`) to the training process's metrics. A worker that dies, or one that
hands over nothing for `data.worker_timeout_s`, stops the run with one `DataError` line naming
the sample it was waiting for, instead of a hang or a traceback from the DataLoader's internals.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from megagoku.data.decode import DecodeStats
from megagoku.data.errors import DataError

log = logging.getLogger(__name__)

# How often a wait for the workers wakes up to report progress and check the time limit.
WAIT_SLICE_S = 5.0


@dataclass(frozen=True)
class ReadOptions:
    workers: int = 0  # 0: read in the training process
    prefetch: int = 2  # requests in flight per worker
    batch: int = 4  # stream indices per request (DALI decodes a request's files as one batch)
    timeout_s: float = 300.0  # nothing from the workers for this long: a stuck worker
    pin_memory: bool = False  # page-locked samples, for non-blocking copies to a GPU

    @classmethod
    def from_config(cls, cfg, device: str) -> "ReadOptions":
        return cls(cfg.num_workers, cfg.prefetch_factor, cfg.read_batch, cfg.worker_timeout_s,
                   device == "cuda")


def _pin(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if isinstance(value, list):
        return [_pin(v) for v in value]
    return value


@dataclass
class Fetched:
    """Stream index `index`'s sample (None: its file could not serve), and what the reader
    counted while reading it (and the rest of its request), for the metrics."""

    index: int
    sample: Any
    stats: Optional[DecodeStats] = None

    def pin_memory(self) -> "Fetched":  # called by the DataLoader's pinning thread
        sample = self.sample
        if sample is not None and dataclasses.is_dataclass(sample):
            sample = dataclasses.replace(sample, **{
                f.name: _pin(getattr(sample, f.name)) for f in dataclasses.fields(sample)
                if isinstance(getattr(sample, f.name), (torch.Tensor, list))})
        return Fetched(self.index, sample, self.stats)


class StreamDataset(Dataset):
    """Map-style over replica r of n's stream: index i is `dataset[i * n + r]`."""

    def __init__(self, dataset, replica: tuple[int, int] = (0, 1)):
        self.dataset = dataset
        self.replica = replica

    def _position(self, index: int) -> int:
        return index * self.replica[1] + self.replica[0]

    def _counted(self, read: Callable[[], list], indices: Sequence[int]) -> list[Fetched]:
        reader = getattr(self.dataset, "reader", None)
        before = reader.stats.copy() if reader is not None else None
        samples = read()
        stats = reader.stats.since(before) if reader is not None else None
        return [Fetched(i, s, stats if k == 0 else None)
                for k, (i, s) in enumerate(zip(indices, samples))]

    def __getitem__(self, index: int) -> Fetched:
        return self._counted(lambda: [self.dataset[self._position(index)]], [index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Fetched]:
        many = getattr(self.dataset, "get_many", None)
        positions = [self._position(i) for i in indices]
        if many is None:
            return self._counted(lambda: [self.dataset[p] for p in positions], indices)
        return self._counted(lambda: many(positions), indices)

    def describe(self, index: int) -> str:
        """What stream index `index` reads, for an error line."""
        describe = getattr(self.dataset, "describe", None)
        where = f"sample {self._position(index)}"
        return f"{where} ({describe(self._position(index))})" if describe else where


class StreamOrder(Sampler):
    """The indices to read, in order: `first` (a saved window), then `start`, start + 1, ..."""

    def __init__(self):
        self.first: list[int] = []
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.chain(self.first, itertools.count(self.start))


def _as_list(batch: list) -> list:
    return batch


def _worker_init(worker_id: int) -> None:
    # Ctrl-C at a terminal reaches the whole process group; the training process alone answers
    # it (it saves at the end of the step, then stops its workers). A worker that took it would
    # end its loop quietly and the save would fail on "a data worker died". (Ignored from birth
    # too: `SampleReads._start` spawns them with SIGINT ignored, which a spawned child keeps.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A spawned worker has no logging set up: its skip warnings look like the trainer's.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format=f"%(levelname)s %(name)s [data worker {worker_id}]: %(message)s")


class SampleReads:
    """Fetched samples of a StreamDataset in stream order, read by `options.workers` processes
    (or in this process when 0). `restart(first, start)` sets where reading begins; `next()`
    returns the next one. `progress(phase)`, when given, is called while a wait for the workers
    lasts (every WAIT_SLICE_S). The trainer gives none: under `megagoku launch` a rank beats when
    a sample arrives (`PackingLoader._fill`), never on a timer, so a rank whose workers hang goes
    quiet to the launcher, and `data.worker_timeout_s` names the stuck sample."""

    def __init__(self, dataset: StreamDataset, options: ReadOptions,
                 progress: Optional[Callable[[str], None]] = None):
        self.dataset = dataset
        self.options = options
        self.progress = progress
        self.order = StreamOrder()
        workers = options.workers
        slice_s = min(WAIT_SLICE_S, options.timeout_s) if options.timeout_s > 0 else WAIT_SLICE_S
        self.loader = DataLoader(
            dataset, batch_size=options.batch, sampler=self.order, collate_fn=_as_list,
            num_workers=workers, prefetch_factor=options.prefetch if workers else None,
            persistent_workers=workers > 0, pin_memory=options.pin_memory,
            timeout=slice_s if workers else 0,
            multiprocessing_context="spawn" if workers else None,
            worker_init_fn=_worker_init if workers else None,
            # Each iterator draws its workers' base seed: from a generator of its own, not the
            # global one a checkpoint saves (reading is deterministic and needs no seed).
            generator=torch.Generator().manual_seed(0))
        self._iterator = None
        self._ready: deque[Fetched] = deque()
        self._first: deque[int] = deque()  # the order's first indices not handed out yet
        self._next = 0  # then this one, and on

    def restart(self, first: Sequence[int], start: int) -> None:
        self.order.first, self.order.start = [int(i) for i in first], int(start)
        self._ready.clear()
        self._first, self._next = deque(self.order.first), self.order.start
        if self._iterator is not None:  # persistent workers: iter() again resumes them
            self._iterator = self._start()

    def _start(self):
        if threading.current_thread() is not threading.main_thread():
            return iter(self.loader)
        # torch installs a SIGCHLD handler that raises from wherever the main thread happens to
        # be when a worker dies; worker deaths are found (and said in one line) where we wait.
        # The workers are spawned with SIGINT ignored (they keep it through their imports, before
        # `_worker_init` runs); the training process's own handler is put back at once.
        previous = signal.getsignal(signal.SIGCHLD)
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return iter(self.loader)
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGCHLD, previous)

    def next(self) -> Fetched:
        if not self._ready:
            if self._iterator is None:
                self._iterator = self._start()
            self._ready.extend(self._wait())
        fetched = self._ready.popleft()
        expected = self._expected()
        if self._first:
            self._first.popleft()
        else:
            self._next += 1
        if fetched.index != expected:  # a bug, never data: fail loudly
            raise RuntimeError(f"data workers returned stream index {fetched.index}, "
                               f"expected {expected}")
        return fetched

    def _expected(self) -> int:
        return self._first[0] if self._first else self._next

    def _waiting_for(self) -> str:
        return f" while reading {self.dataset.describe(self._expected())}"

    def _wait(self) -> list[Fetched]:
        waited = 0.0
        while True:
            start = time.perf_counter()
            try:
                return next(self._iterator)
            except RuntimeError as e:
                message = str(e)
                if message.startswith("DataLoader timed out"):
                    waited += time.perf_counter() - start
                    if self.progress is not None:
                        self.progress("data")
                    if self.options.timeout_s > 0 and waited >= self.options.timeout_s:
                        self.close()
                        raise DataError(
                            f"data: the {self.options.workers} data workers handed over nothing "
                            f"for {waited:.0f} s{self._waiting_for()}: a worker is stuck (limit: "
                            f"data.worker_timeout_s = {self.options.timeout_s:g})") from None
                    continue
                if message.startswith("DataLoader worker"):  # "... exited unexpectedly"
                    death = self._death()
                    self.close()
                    raise DataError(f"data: a data worker died{death}") from None
                raise

    def _death(self) -> str:
        """How the dead worker ended and which samples it had been given and not handed over."""
        iterator = self._iterator
        workers = getattr(iterator, "_workers", [])
        dead = {i for i, w in enumerate(workers) if w.exitcode not in (None, 0)}
        if not dead:
            return self._waiting_for()
        worker = workers[min(dead)]
        code = worker.exitcode
        try:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        except ValueError:
            how = f"killed by signal {-code}"
        how = f" (pid {worker.pid}, {how})"
        # Requests are numbered from the last (re)start in sampler order, `batch` indices each;
        # the DataLoader keeps (worker,) for each one not handed over yet.
        tasks = sorted(k for k, info in getattr(iterator, "_task_info", {}).items()
                       if len(info) == 1 and info[0] in dead)
        held = [i for k in tasks for i in itertools.islice(
            iter(self.order), k * self.options.batch, (k + 1) * self.options.batch)]
        if not held:
            return how + self._waiting_for()
        return (f"{how} holding samples {', '.join(str(self.dataset._position(i)) for i in held)}"
                f" unread (the first: {self.dataset.describe(held[0])})")

    def close(self) -> None:
        """Stop the workers (also done at exit; a run calls it when it ends)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            self.loader._iterator = None  # (persistent workers: the DataLoader keeps it)
        self._ready.clear()
