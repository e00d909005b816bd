"""A run dir has one owner (issue 22, case 1): a second run, `--resume auto` or `--overwrite`, is
refused with one line naming the owner's host and pid while the owner lives, and the dir is free
again the moment the owner dies, however it dies. Both kinds of hold: fcntl and the lease."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megagoku.cli import main
from megagoku.config import ConfigError, load_training_config
from megagoku.train.run_lock import OWNER_FILE, RunDirBusy, RunLock
from megagoku.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
TINY = ["--config", "configs/tiny.yaml", "--set", "train.steps=2", "--set", "model.depth=1",
        "--set", "train.log_every=1"]

HOLDER = """
import sys, time
from megagoku.train.run_lock import RunLock
lock = RunLock(sys.argv[1], sys.argv[2], float(sys.argv[3])).acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold(run_dir: Path, kind: str = "fcntl", lease_s: float = 60.0) -> subprocess.Popen:
    """Another process that owns `run_dir` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), kind, str(lease_s)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_hold_in_one_process_is_refused_until_released(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirBusy, match=f"in use by host {HOST} pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    assert first.held  # the refusal did not drop the first hold (POSIX locks are per process)
    first.release()
    with RunLock(tmp_path) as again:
        assert json.loads((tmp_path / OWNER_FILE).read_text())["pid"] == os.getpid()
        assert again.held


def test_a_live_owner_is_named_and_its_death_frees_the_dir(tmp_path):
    owner = hold(tmp_path)
    try:
        with pytest.raises(RunDirBusy) as refused:
            RunLock(tmp_path).acquire()
        assert f"host {HOST} pid {owner.pid}" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        owner.kill()  # SIGKILL: no clean-up of any kind
        owner.wait()
    with RunLock(tmp_path):  # the kernel dropped the dead owner's lock
        pass


def test_train_refuses_a_live_run_dir_and_overwrite_leaves_it_alone(tmp_path, capsys):
    assert main(["train", *TINY, "--run-dir", str(tmp_path)]) == 0
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    metrics = (tmp_path / "metrics.jsonl").read_text()
    capsys.readouterr()
    owner = hold(tmp_path)  # the run dir's owner, alive
    try:
        for extra in (["--overwrite"], ["--resume", "auto"], ["--overwrite", "--resume", "auto"]):
            assert main(["train", *TINY, "--run-dir", str(tmp_path), *extra]) == 2, extra
            err = capsys.readouterr().err.strip().splitlines()
            assert err[-1].startswith(f"error: {tmp_path}: run dir is in use by host {HOST} "
                                      f"pid {owner.pid}"), err
            assert not any("Traceback" in line for line in err)
        # Nothing of the live run was touched.
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
        assert (tmp_path / "metrics.jsonl").read_text() == metrics
    finally:
        owner.kill()
        owner.wait()
    assert main(["train", *TINY, "--run-dir", str(tmp_path), "--overwrite"]) == 0


def test_a_run_releases_its_dir_on_success_and_on_failure(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", ["train.steps=1", "model.depth=1"])
    train(cfg, tmp_path)
    with RunLock(tmp_path):  # released after a run
        pass
    with pytest.raises(ConfigError, match="already holds"):
        train(cfg, tmp_path)  # refused after taking the dir: released again
    with RunLock(tmp_path):
        pass


def test_lease_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    owner = hold(tmp_path, "lease", 60.0)
    try:
        with pytest.raises(RunDirBusy, match=f"host {HOST} pid {owner.pid}"):
            RunLock(tmp_path, "lease", 60.0).acquire()
    finally:
        owner.kill()
        owner.wait()
    # The dead owner's file is still there, but its pid is gone on this host: taken over.
    with RunLock(tmp_path, "lease", 60.0) as lock:
        assert json.loads((tmp_path / OWNER_FILE).read_text())["token"] == lock.owner.token
    assert not (tmp_path / OWNER_FILE).exists()  # a lease is given back by removing it


def test_lease_of_another_host_expires_by_the_filesystem_clock(tmp_path):
    record = {"host": "elsewhere", "pid": 1, "started": 0.0, "token": "theirs", "beat": 3}
    (tmp_path / OWNER_FILE).write_text(json.dumps(record))
    with pytest.raises(RunDirBusy, match="host elsewhere pid 1"):
        RunLock(tmp_path, "lease", 30.0).acquire()  # renewed just now (its mtime)
    old = time.time() - 60
    os.utime(tmp_path / OWNER_FILE, (old, old))  # not renewed for 60 s > lease_s
    with RunLock(tmp_path, "lease", 30.0) as lock:
        assert lock.owner.token != "theirs"


def test_a_lease_owner_whose_lease_was_taken_exits(tmp_path):
    owner = hold(tmp_path, "lease", 0.4)  # renews every 0.1 s
    record = json.loads((tmp_path / OWNER_FILE).read_text())
    (tmp_path / OWNER_FILE).write_text(json.dumps({**record, "token": "a rival"}))
    assert owner.wait(timeout=10) == 2


def test_a_run_can_hold_its_dir_by_a_lease(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "train.steps=1", "model.depth=1", "checkpoint.run_lock=lease", "checkpoint.lease_s=30"])
    owner = hold(tmp_path, "lease", 30.0)
    try:
        with pytest.raises(RunDirBusy, match=f"pid {owner.pid}"):
            train(cfg, tmp_path)
    finally:
        owner.kill()
        owner.wait()
    assert train(cfg, tmp_path, overwrite=True).steps == 1  # the dead owner's lease taken over
    assert not (tmp_path / OWNER_FILE).exists()


def test_a_run_dir_that_cannot_be_one_is_one_line(tmp_path, capsys):
    """Issue 22's class of faults: a file, or a folder below a file, as --run-dir."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for run_dir, why in ((afile, "a file, not a folder"), (afile / "run", "Not a directory")):
        assert main(["train", *TINY, "--run-dir", str(run_dir)]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == \
            f"error: {run_dir}: cannot use as a run dir ({why})"
