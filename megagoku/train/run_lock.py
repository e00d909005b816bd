"""One owner per run dir: rank 0 of a training run holds an exclusive lock on `<run_dir>/owner.lock`
from before it looks at the run dir until the run ends, so that a second run on the same dir
(a second `megagoku train`, an `--overwrite` of a live run, a stray `--resume auto`) is refused
with one line naming the owner's host and pid, instead of both runs writing the same
checkpoints and logs.

Two ways to hold it (`checkpoint.run_lock`):
- `fcntl` (the default): a POSIX record lock (`fcntl.lockf`) on the owner file. The kernel drops
  it when the owner exits in any way (a crash, SIGKILL, the node's NFS client going away after
  its lease), so a lock is never stale; it is the lock that NFSv4, Lustre (mounted with `flock`,
  the default since 2.12), GPFS, BeeGFS and CephFS enforce across nodes. A POSIX lock belongs to
  the process, not the file descriptor: the same process locking again succeeds and closing any
  descriptor of the file drops it, so a process keeps a table of its own locks and never opens
  an owner file it holds.
- `lease`: for filesystems where fcntl locks are refused (ENOLCK, ENOSYS: Lustre without `flock`,
  NFS mounted `nolock`) or silently node-local (Lustre `localflock`, NFS `local_lock=all`, where
  two nodes can both "hold" it). The owner file is created exclusively and rewritten by a
  heartbeat thread every `lease_s / 4`; another run takes it over only when it was not rewritten
  for `lease_s`, judged by the filesystem's own clock (a probe file's mtime), not the nodes'.
  An owner that finds its lease taken (it stalled for longer than `lease_s`) exits at once:
  the run dir is someone else's now.

With fcntl, a filesystem that refuses the lock is reported with the setting to change.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megagoku.config import ConfigError

log = logging.getLogger(__name__)

OWNER_FILE = "owner.lock"
LOCK_KINDS = ("fcntl", "lease")
BUSY_ERRNOS = (errno.EACCES, errno.EAGAIN)
# A lease owner that cannot keep its lease exits with this (the config-error code: retrying
# cannot help while another run owns the dir).
LEASE_LOST_EXIT = 2

_held: dict[tuple[int, int], "RunLock"] = {}  # this process's fcntl locks, by (device, inode)
_held_guard = threading.Lock()


class RunDirBusy(ConfigError):
    """The run dir belongs to another live run."""


@dataclass
class Owner:
    host: str
    pid: int
    started: float
    token: str = ""
    beat: int = 0

    @classmethod
    def me(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), time.time(), uuid.uuid4().hex)

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started,
                           "token": self.token, "beat": self.beat}) + "\n"

    @classmethod
    def parse(cls, text: str) -> Optional["Owner"]:
        try:
            d = json.loads(text)
            return cls(str(d["host"]), int(d["pid"]), float(d["started"]), str(d.get("token", "")),
                       int(d.get("beat", 0)))
        except (ValueError, KeyError, TypeError):
            return None  # torn or foreign content: the lock itself is what counts

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host} pid {self.pid} (since {since})"


def _busy(run_dir: Path, owner: Optional[Owner]) -> RunDirBusy:
    who = owner.describe() if owner else "another process (owner unknown)"
    return RunDirBusy(f"{run_dir}: run dir is in use by {who}; wait for that run to end, stop "
                      "it, or choose another --run-dir (--overwrite never replaces a live run)")


class RunLock:
    """`acquire()` or raise RunDirBusy; `release()` (idempotent). Also a context manager."""

    def __init__(self, run_dir: str | Path, kind: str = "fcntl", lease_s: float = 60.0):
        if kind not in LOCK_KINDS:
            raise ConfigError(f"checkpoint.run_lock: {kind!r} is not one of {list(LOCK_KINDS)}")
        self.run_dir, self.kind, self.lease_s = Path(run_dir), kind, float(lease_s)
        self.path = self.run_dir / OWNER_FILE
        self.owner: Optional[Owner] = None
        self._fd: Optional[int] = None
        self._key: Optional[tuple[int, int]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self.owner is not None

    def acquire(self) -> "RunLock":
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir}: cannot use as a run dir (a file, not a folder)")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.kind == "fcntl":
                self._acquire_fcntl()
            else:
                self._acquire_lease()
        except OSError as e:  # not a folder, not writable, a full disk
            raise ConfigError(f"{self.run_dir}: cannot use as a run dir ({e.strerror})") from None
        log.debug("run dir %s: owned by %s", self.run_dir, self.owner.describe())
        return self

    def release(self) -> None:
        if self.owner is None:
            return
        if self.kind == "fcntl":
            with _held_guard:
                _held.pop(self._key, None)
            os.close(self._fd)  # drops the lock; the stale record stays, unlocked
            self._fd = None
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            current = Owner.parse(_read(self.path))
            if current is not None and current.token == self.owner.token:
                self.path.unlink(missing_ok=True)
        self.owner = None

    # -- fcntl -----------------------------------------------------------------------------
    def _acquire_fcntl(self) -> None:
        import fcntl

        with _held_guard:
            try:
                st = self.path.stat()
                mine = _held.get((st.st_dev, st.st_ino))
            except FileNotFoundError:
                mine = None
            if mine is not None:  # opening the file again would drop our own lock on close
                raise _busy(self.run_dir, mine.owner)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                text = os.pread(fd, 4096, 0).decode(errors="replace")
                os.close(fd)
                if e.errno in BUSY_ERRNOS:
                    raise _busy(self.run_dir, Owner.parse(text)) from None
                raise ConfigError(
                    f"{self.path}: this filesystem refuses fcntl locks ({os.strerror(e.errno)}); "
                    "set checkpoint.run_lock: lease") from None
            owner = Owner.me()
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner.to_json().encode(), 0)
            st = os.fstat(fd)
            self._fd, self._key, self.owner = fd, (st.st_dev, st.st_ino), owner
            _held[self._key] = self

    # -- lease -----------------------------------------------------------------------------
    def _acquire_lease(self) -> None:
        owner = Owner.me()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            current = Owner.parse(_read(self.path))
            if not self._stale(current):
                raise _busy(self.run_dir, current) from None
            log.warning("run dir %s: taking over the lease of %s (not renewed for %.0f s)",
                        self.run_dir, current.describe() if current else "an unknown owner",
                        self.lease_s)
            _write_atomically(self.path, owner.to_json())
            time.sleep(min(2.0, self.lease_s / 10))  # a rival taking over at once: last wins
            if (Owner.parse(_read(self.path)) or Owner("", 0, 0)).token != owner.token:
                raise _busy(self.run_dir, Owner.parse(_read(self.path))) from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(owner.to_json())
        self.owner = owner
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._thread.start()

    def _stale(self, current: Optional[Owner]) -> bool:
        """Whether the lease was not renewed for `lease_s` (by the filesystem's clock), or its
        owner, on this host, is gone."""
        if current is not None and current.host == socket.gethostname():
            try:
                os.kill(current.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        try:
            renewed = self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return filesystem_now(self.run_dir) - renewed > self.lease_s

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            current = Owner.parse(_read(self.path))
            if current is None or current.token != self.owner.token:
                log.error("run dir %s: the lease was taken over by %s while this run stalled; "
                          "exiting at once", self.run_dir,
                          current.describe() if current else "another run")
                os._exit(LEASE_LOST_EXIT)
            self.owner.beat += 1
            try:
                _write_atomically(self.path, self.owner.to_json())
            except OSError as e:  # a full disk: the lease ages; the next beat tries again
                log.warning("run dir %s: lease not renewed (%s)", self.run_dir, e)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def filesystem_now(folder: Path) -> float:
    """The time on the filesystem's clock: the mtime of a file written there now (the server's,
    on NFS), so that lease ages do not depend on the clocks of the nodes."""
    probe = folder / f".clock.{socket.gethostname()}.{os.getpid()}"
    try:
        probe.write_text("")
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        probe.unlink(missing_ok=True)
