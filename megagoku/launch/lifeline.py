"""Workers die with their launcher. `megagoku launch` names itself in `MEGAGOKU_LAUNCHER_PID`;
a worker started by it (`python -m megagoku`, first thing) asks the kernel for SIGKILL when its
parent dies (`PR_SET_PDEATHSIG`), then checks that its parent is still the launcher (it may have
died before the request). So `kill -9` of the launcher, or the OOM killer, takes its workers with
it within the kernel's reaping time: no orphan trains on, writes checkpoints or holds the run dir
while a requeued job starts a new generation of workers.

SIGKILL, not SIGTERM: a launcher that is gone cannot see a save through or restart anything, and
the newest committed checkpoint is what the next launch resumes from.

The variable is removed from the worker's environment, so processes the worker starts (a nested
`megagoku` command) are not bound to a launcher that is not their parent."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

ENV = "MEGAGOKU_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    pid = os.environ.pop(ENV, None)
    if not pid:
        return
    launcher = int(pid)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    else:  # no prctl: watch the parent instead
        threading.Thread(target=_watch, args=(launcher,), name="lifeline", daemon=True).start()
    if os.getppid() != launcher:  # the launcher died before the request took effect
        os._exit(1)


def _watch(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
