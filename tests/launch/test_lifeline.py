"""Workers die with their launcher (`launch/lifeline.py`): a process standing in for the launcher
starts a worker that runs `die_with_launcher()`; `kill -9` of the launcher ends the worker within
seconds. The end-to-end version, with `megagoku launch` itself, is in test_launcher.py."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from megagoku.launch import lifeline

ROOT = Path(__file__).resolve().parents[2]
WORKER = """
import os, sys, time
from megagoku.launch.lifeline import die_with_launcher, ENV
die_with_launcher()
print(os.getpid(), ENV in os.environ, flush=True)
time.sleep(120)
"""
LAUNCHER = """
import os, subprocess, sys, time
env = {**os.environ, "MEGAGOKU_LAUNCHER_PID": str(os.getpid())}
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, stdout=sys.stdout)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_kill_9_of_the_launcher_kills_its_worker(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WORKER], env=env,
                                stdout=subprocess.PIPE, text=True)
    try:
        pid, inherited = launcher.stdout.readline().split()
        pid = int(pid)
        assert inherited == "False"  # the worker's own children are not bound to the launcher
        assert alive(pid)
        launcher.send_signal(signal.SIGKILL)
        deadline = time.time() + 5
        while alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the worker outlived its launcher"
    finally:
        launcher.kill()
        launcher.wait()


def test_a_worker_whose_launcher_is_already_gone_exits():
    env = {**os.environ, "PYTHONPATH": str(ROOT), lifeline.ENV: "1"}  # not its parent
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
