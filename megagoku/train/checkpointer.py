"""Asynchronous checkpointing in two phases, in the manner of ByteCheckpoint / MegaScale.

1. Snapshot (training waits): the tensors are gathered (`train_state.snapshot_tensors`, the
   collectives) and copied to host memory, into pinned buffers on a GPU so the copy runs at
   full PCIe speed. From then on training may change its tensors freely.
2. Persist (training continues): a background thread writes this rank's file and posts its
   marker, and rank 0 waits for every rank's marker and commits (`checkpoint.commit`), then
   prunes old checkpoints (the newest `keep_last`, plus every `keep_every`-th step, are kept).
   The markers travel through the process group's store (`parallel.collectives.post`): rank 0
   blocks in the store until each arrives, where it used to poll marker files every 20 ms (at
   1,000 ranks, a storm of metadata requests on a parallel filesystem). Without a process group
   (tools, tests) they are files in the checkpoint's folder, as before.

At most one save is in flight: a new snapshot first waits for the previous persist, so host
memory holds one snapshot at a time. A persist that fails (a full disk, an I/O error) commits
nothing, removes its half-written part and is reported; every earlier commit stays valid. The
failure surfaces as a warning at once and, for the final save, as an error (`wait`).
`async_save: false` runs the same persist in the calling thread (the synchronous baseline).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from megagoku.launch import heartbeat
from megagoku.parallel import collectives
from megagoku.train.checkpoint import (CheckpointError, commit, prune, step_dir_name,
                                       wait_for_markers, write_rank_part)

MARKER_WAYS = ("auto", "store", "files")

log = logging.getLogger(__name__)


@dataclass
class SaveStats:
    blocked_s: list[float] = field(default_factory=list)  # training waited, per save
    persist_s: list[float] = field(default_factory=list)  # background write (+ commit on rank 0)
    committed: list[int] = field(default_factory=list)  # steps (rank 0 only)
    # Rank 0: from the last rank's part on disk to the checkpoint committed (wall clocks of
    # the ranks' hosts: across nodes, their skew counts too)
    commit_latency_s: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Checkpointer:
    def __init__(self, run_dir: Path, rank: int, world: int, async_save: bool = True,
                 keep_last: int = 3, keep_every: int = 0, commit_timeout_s: float = 1800.0,
                 on_commit: Optional[Callable[[int, Path], None]] = None, markers: str = "auto"):
        """`markers`: how ranks hand rank 0 their part: `store` (the process group's), `files`
        (polled marker files: the old way, kept for a world without a group and as the
        benchmark's baseline), `auto` (the store when a group of this world is running)."""
        if markers not in MARKER_WAYS:
            raise ValueError(f"markers must be one of {', '.join(MARKER_WAYS)}, got {markers!r}")
        self.root = Path(run_dir) / "checkpoints"
        self.rank, self.world = rank, world
        self.async_save = async_save
        self.keep_last, self.keep_every = keep_last, keep_every
        self.commit_timeout_s = commit_timeout_s
        self.on_commit = on_commit  # rank 0, in the writer thread: e.g. the launcher's event log
        self.stats = SaveStats()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._last_path: Optional[Path] = None
        self._buffers: dict[str, torch.Tensor] = {}
        self.markers = markers
        self._saves = 0  # every rank persists the same saves in the same order: the store keys

    def to_host(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """A copy on the host that training cannot change any more. The host buffers are kept
        from one save to the next (pinned for a GPU tensor): a fresh allocation per save would
        page-fault on first touch and run at a fraction of memory speed (measured: 3 GB/s
        against 14 GB/s here). Safe because a snapshot starts only once the previous persist
        is over."""
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype,
                                 pin_memory=tensor.device.type == "cuda")
            self._buffers[key] = buffer
        heartbeat.progress("snapshot")  # per tensor: a long gather is not a hang
        # Non-blocking from a GPU: synchronised in `persist`.
        return buffer.copy_(tensor.detach(), non_blocking=tensor.device.type == "cuda")

    def wait(self) -> Optional[Path]:
        """Wait for the save in flight; raise CheckpointError if it failed. Returns the newest
        committed checkpoint (rank 0; None elsewhere)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(str(error))
        return self._last_path

    def wait_quietly(self) -> None:
        """Wait for the save in flight; a failure was already reported."""
        try:
            self.wait()
        except CheckpointError:
            pass

    def persist(self, step: int, tensors: dict[str, torch.Tensor], rng: dict,
                config: Optional[dict] = None, state: Optional[dict] = None) -> None:
        """Phase 2 for a snapshot taken by the caller (who measured phase 1 with the previous
        save's wait): in the background when async, else here."""
        if any(t.is_pinned() for t in tensors.values()):
            torch.cuda.synchronize()  # the non-blocking device-to-host copies have landed
        self._saves += 1
        keys = self._store_keys(step) if self._via_store() else None
        if self.async_save:
            self._thread = threading.Thread(target=self._persist, name=f"ckpt-{step}",
                                            args=(step, tensors, rng, config, state, keys),
                                            daemon=True)
            self._thread.start()
        else:
            self._persist(step, tensors, rng, config, state, keys)

    def _via_store(self) -> bool:
        started = collectives.is_started() and collectives.world_size() == self.world
        if self.markers == "store" and not started:
            raise CheckpointError(f"markers through the store need a process group of "
                                  f"{self.world} ranks")
        return self.markers != "files" and started

    def _store_keys(self, step: int) -> list[str]:
        """Where each rank posts its marker for this save (unique in the group's life)."""
        return [f"megagoku/checkpoint/{self.root}/{self._saves}/{step_dir_name(step)}/rank-{r}"
                for r in range(self.world)]

    def _collect(self, keys: list[str], tmp: Path) -> list[dict]:
        """Rank 0: every rank's marker, in rank order, as each arrives; CheckpointError as soon
        as one says it failed, or when the timeout passes."""
        deadline = time.monotonic() + self.commit_timeout_s
        markers = []
        for rank, key in enumerate(keys):
            try:
                posted = json.loads(collectives.wait_for_post(key, deadline - time.monotonic()))
            except TimeoutError:
                missing = ", ".join(f"rank-{r:05d}" for r in range(rank, self.world))
                raise CheckpointError(f"{tmp}: ranks never finished writing ({missing} missing "
                                      f"after {self.commit_timeout_s:.0f} s); not committed") \
                    from None
            if "failed" in posted:
                raise CheckpointError(f"{tmp}: rank {rank}: {posted['failed']}; not committed")
            markers.append(posted)
        collectives.forget_posts(keys)
        return markers

    def _persist(self, step: int, tensors, rng, config, state,
                 keys: Optional[list[str]] = None) -> None:
        start = time.perf_counter()
        tmp = self.root / f".tmp_{step_dir_name(step)}"
        posted = False
        try:
            marker = write_rank_part(tmp, self.rank, self.world, tensors, rng,
                                     marker_file=keys is None)
            if keys is not None:
                collectives.post(keys[self.rank], json.dumps(marker))
                posted = True
            if self.rank == 0:
                markers = wait_for_markers(tmp, self.world, self.commit_timeout_s) \
                    if keys is None else self._collect(keys, tmp)
                self._last_path = commit(self.root, step, self.world, config, state,
                                         self.commit_timeout_s, markers)
                self.stats.committed.append(step)
                self.stats.commit_latency_s.append(
                    time.time() - max(m.get("written_at", 0.0) for m in markers))
                if self.on_commit is not None:
                    self.on_commit(step, self._last_path)
                for removed in prune(self.root, self.keep_last, self.keep_every):
                    log.info("removed old checkpoint %s", removed.name)
        except Exception as e:  # noqa: BLE001 - any failure: nothing committed, training goes on
            message = f"checkpoint of step {step} not saved ({type(e).__name__}: {e})"
            log.error("%s; the last committed checkpoint stays valid", message)
            self.stats.failed.append(message)
            self._error = e if isinstance(e, CheckpointError) else CheckpointError(message)
            self._abandon(tmp, message, keys, posted)
        finally:
            self.stats.persist_s.append(time.perf_counter() - start)

    def _abandon(self, tmp: Path, message: str, keys: Optional[list[str]], posted: bool) -> None:
        """Tell rank 0 not to wait for this part (through the store, or a failure marker file),
        and free the space."""
        try:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            elif keys is not None:
                if not posted:
                    collectives.post(keys[self.rank], json.dumps({"failed": message}))
            else:
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / f"rank-{self.rank:05d}.failed").write_text(json.dumps(message))
        except (OSError, RuntimeError):
            pass  # a full disk (or a lost store) may refuse even this: rank 0 waits it out
