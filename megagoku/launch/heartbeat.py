"""Heartbeats: liveness is progress, not steps.

Worker side, one call from anywhere in a worker: `progress()` says "something advanced" (a
training step, an eval batch, a sampling step, a tensor saved or loaded, a sample read), and
`phase(name)` names what the calls inside it belong to:

    from megagoku.launch import heartbeat
    heartbeat.progress("train", step=step)          # after each training step
    with heartbeat.phase("eval"):                   # around a long pass ...
        for batch in batches:
            ...; heartbeat.progress()               # ... that reports each unit of work

Outside `megagoku launch` (no `MEGAGOKU_HEARTBEAT_DIR`) both are no-ops that cost one global
lookup. Under it, each rank rewrites one small file, `rank-<global rank>.json` (pid, phase, last
training step, monotonic time), in a node-local directory the launcher made in /dev/shm (tmpfs;
the temp dir where there is none): a heartbeat never touches the shared filesystem, and it is
written at once when the phase or the step changes and at most once a second otherwise, so a call
per tensor or per batch costs nothing measurable.

Launcher side (`HeartbeatMonitor`): a rank is slow while its beats advance and quiet when nothing
advanced for the timeout (`--startup-timeout` until its first training step of an attempt,
`--heartbeat-timeout` after). The group is hung when all its ranks are quiet (on several nodes:
and no other node reported progress, `agent.py`), since a rank blocked in a collective while its
peer evaluates is waiting, not stuck; a rank blocked on a dead or hung peer beats no more, and
neither does the peer, so that is a hang: nothing here beats on a timer. The hang names the
phase each rank last reported.

This module imports nothing of megagoku (every room may import it: docs/architecture.md)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

ENV = "MEGAGOKU_HEARTBEAT_DIR"
# A beat is rewritten at once when the phase or the step changes, else at most this often.
MIN_INTERVAL_S = 1.0
_DIR_PREFIX = "megagoku-heartbeats-"


def heartbeat_file(directory: Path, rank: int) -> Path:
    return Path(directory) / f"rank-{rank:05d}.json"


# -- the worker side ---------------------------------------------------------------------------
class _Beater:
    def __init__(self, directory: Path, rank: int):
        self.path = heartbeat_file(directory, rank)
        self.rank = rank
        self.lock = threading.Lock()
        self.local = threading.local()  # each thread's phase stack
        self.step: Optional[int] = None
        self.written: tuple = (None, None)  # (phase, step) of the last write
        self.written_at = float("-inf")

    def phases(self) -> list[str]:
        stack = getattr(self.local, "stack", None)
        if stack is None:
            stack = self.local.stack = []
        return stack

    def beat(self, what: str, step: Optional[int]) -> None:
        name = "/".join([*self.phases(), what] if what else self.phases()) or "start"
        now = time.monotonic()
        with self.lock:
            if step is not None:
                self.step = step
            key = (name, self.step)
            if key == self.written and now - self.written_at < MIN_INTERVAL_S:
                return
            record = {"pid": os.getpid(), "rank": self.rank, "phase": name, "step": self.step,
                      "mono": now, "time": time.time()}
            # Per process: a forked helper of the worker writes its own temporary.
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            try:
                tmp.write_text(json.dumps(record))
                os.replace(tmp, self.path)  # a reader sees the old beat or the new one
            except OSError:
                return  # the launcher is gone or tidied up: nobody to tell
            self.written, self.written_at = key, now


_beater: Optional[_Beater] = None
_resolved = False


def _get() -> Optional[_Beater]:
    global _beater, _resolved
    if not _resolved:
        directory = os.environ.get(ENV)
        if directory:
            _beater = _Beater(Path(directory), int(os.environ.get("RANK", "0")))
        _resolved = True
    return _beater


def progress(what: str = "", step: Optional[int] = None) -> None:
    """Something advanced. `what` names the unit inside the current phase (e.g. "sample" in
    "eval"); `step`, from the training loop only, is the training step just finished."""
    beater = _beater if _resolved else _get()
    if beater is not None:
        beater.beat(what, step)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Name the work inside (nested phases join with '/': "eval/sample"); beats on the way in
    and out. Per thread: a background writer's phases do not rename the training loop's."""
    beater = _beater if _resolved else _get()
    if beater is None:
        yield
        return
    stack = beater.phases()
    stack.append(name)
    beater.beat("", None)
    try:
        yield
    finally:
        stack.pop()
        beater.beat("", None)


def _reset_for_tests() -> None:
    global _beater, _resolved
    _beater, _resolved = None, False


# -- the launcher side -------------------------------------------------------------------------
def node_local_root() -> Path:
    """Where heartbeats live: tmpfs that only this node sees."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_dirs(root: Path) -> None:
    """Heartbeat folders of launchers that died without tidying up (kill -9)."""
    for path in root.glob(f"{_DIR_PREFIX}*"):
        try:
            pid = int(path.name[len(_DIR_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):  # (another user's folder: the sticky /dev/shm refuses, fine)
            shutil.rmtree(path, ignore_errors=True)


def read_beat(directory: Path, rank: int) -> Optional[dict]:
    try:
        return json.loads(heartbeat_file(directory, rank).read_text())
    except (OSError, ValueError):
        return None


class HeartbeatMonitor:
    """Which of this node's ranks have gone quiet. Owns the node-local folder (`close` removes
    it)."""

    def __init__(self, timeout_s: float, startup_timeout_s: float,
                 root: Optional[Path] = None):
        root = node_local_root() if root is None else Path(root)
        remove_stale_dirs(root)
        self.directory = root / f"{_DIR_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.directory.mkdir(mode=0o700, parents=True)
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.started = time.monotonic()
        self.last_step: Optional[int] = None  # the newest training step seen, over attempts

    def reset(self, ranks: Iterable[int]) -> None:
        """A new attempt: forget the last one's beats."""
        for rank in ranks:
            heartbeat_file(self.directory, rank).unlink(missing_ok=True)
        self.started = time.monotonic()

    def beats(self, ranks: Iterable[int]) -> dict[int, dict]:
        out = {r: b for r in ranks if (b := read_beat(self.directory, r)) is not None}
        steps = [b["step"] for b in out.values() if b.get("step") is not None]
        if steps:
            self.last_step = max(steps + ([self.last_step] if self.last_step is not None else []))
        return out

    def latest(self, ranks: Iterable[int]) -> Optional[float]:
        """The monotonic time anything last advanced in these ranks."""
        times = [float(b["mono"]) for b in self.beats(ranks).values()]
        return max(times) if times else None

    def trained(self, ranks: Iterable[int]) -> bool:
        """Whether any rank finished a training step in this attempt."""
        return any(b.get("step") is not None for b in self.beats(ranks).values())

    def hung(self, ranks: Iterable[int], now: Optional[float] = None,
             elsewhere: Optional[float] = None) -> dict[int, str]:
        """rank -> where it stands, for every rank, when the group is hung; {} while it is not.

        A rank is quiet when nothing advanced in it for its timeout: the startup timeout before
        its first training step of the attempt, the heartbeat timeout after. The group is hung
        only when every rank is quiet and nothing advanced `elsewhere` (the monotonic time other
        nodes last reported progress) within the heartbeat timeout: a rank that waits in a
        collective for a peer that evaluates, samples or saves is waiting, not hung, and a rank
        that is hung soon has every peer waiting for it."""
        now = time.monotonic() if now is None else now
        ranks = list(ranks)
        beats = self.beats(ranks)
        status, quiet = {}, True
        for rank in ranks:
            beat = beats.get(rank)
            if beat is None:
                age, timeout = now - self.started, self.startup_timeout_s
                status[rank] = (f"nothing reported {age:.0f} s after the start "
                                f"(--startup-timeout {timeout:g})")
            else:
                trained = beat.get("step") is not None
                timeout = self.timeout_s if trained else self.startup_timeout_s
                age = now - max(float(beat["mono"]), self.started)
                # The phase of its last report: where it was when it stopped advancing.
                where = f"last in {beat['phase']!r}"
                where += f" after training step {beat['step']}" if trained else \
                    " before its first training step"
                option = "--heartbeat-timeout" if trained else "--startup-timeout"
                status[rank] = f"nothing advanced for {age:.0f} s, {where} ({option} {timeout:g})"
            quiet = quiet and age > timeout
        if elsewhere is not None and now - elsewhere <= self.timeout_s:
            quiet = False
        return status if quiet and ranks else {}

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
