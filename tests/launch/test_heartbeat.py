"""Heartbeats: the worker's `progress`/`phase` and the launcher's view of them (`HeartbeatMonitor`):
a phase is slow while it advances and hung only when nothing advances for the timeout, in every
rank of the group."""

import json
import os
import subprocess
import sys

import pytest

from megagoku.launch import heartbeat
from megagoku.launch.heartbeat import HeartbeatMonitor, heartbeat_file, read_beat


@pytest.fixture
def beats(tmp_path, monkeypatch):
    """The worker side as `megagoku launch` sets it up, for rank 1."""
    monkeypatch.setenv(heartbeat.ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    heartbeat._reset_for_tests()
    yield tmp_path
    heartbeat._reset_for_tests()


def test_without_the_launcher_progress_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(heartbeat.ENV, raising=False)
    heartbeat._reset_for_tests()
    heartbeat.progress("train", step=1)
    with heartbeat.phase("eval"):
        heartbeat.progress("sample")
    assert heartbeat._get() is None and not list(tmp_path.iterdir())
    heartbeat._reset_for_tests()


def test_the_beat_records_phase_and_step(beats):
    heartbeat.progress("train", step=3)
    beat = read_beat(beats, 1)
    assert (beat["phase"], beat["step"], beat["pid"], beat["rank"]) == ("train", 3, os.getpid(), 1)
    with heartbeat.phase("eval"):
        heartbeat.progress("sample")
        assert read_beat(beats, 1)["phase"] == "eval/sample"
        with heartbeat.phase("classifier"):
            heartbeat.progress()
            assert read_beat(beats, 1)["phase"] == "eval/classifier"
    after = read_beat(beats, 1)
    assert after["step"] == 3 and after["phase"] == "start"  # the step stays the last one trained
    assert [p.name for p in beats.iterdir()] == ["rank-00001.json"]  # no temporary left behind


def test_repeated_progress_is_written_at_most_once_a_second(beats, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: clock[0])
    heartbeat.progress("save")
    first = read_beat(beats, 1)["mono"]
    for _ in range(50):  # a call per tensor: no rewrite within the interval
        clock[0] += 0.01
        heartbeat.progress("save")
    assert read_beat(beats, 1)["mono"] == first
    clock[0] += 1.0
    heartbeat.progress("save")
    assert read_beat(beats, 1)["mono"] == clock[0]
    heartbeat.progress("load")  # a new phase is written at once
    assert read_beat(beats, 1)["phase"] == "load"


def test_the_phase_works_as_a_decorator(beats):
    @heartbeat.phase("samples")
    def work():
        heartbeat.progress("sample")
        return read_beat(beats, 1)["phase"]

    assert work() == "samples/sample" and work() == "samples/sample"


def write_beat(monitor, rank, mono, step=None, phase="train"):
    heartbeat_file(monitor.directory, rank).write_text(json.dumps(
        {"pid": 1, "rank": rank, "phase": phase, "step": step, "mono": mono, "time": 0}))


@pytest.fixture
def monitor(tmp_path):
    m = HeartbeatMonitor(timeout_s=10, startup_timeout_s=100, root=tmp_path)
    m.started = 0.0
    yield m
    m.close()
    assert not m.directory.exists()


def test_a_waiting_rank_is_not_hung_while_its_peer_advances(monitor):
    """Rank 1 waits in a collective while rank 0 evaluates: slow, not hung."""
    write_beat(monitor, 0, mono=195, step=20, phase="eval/sample")
    write_beat(monitor, 1, mono=150, step=20)
    assert monitor.hung([0, 1], now=200) == {}
    hung = monitor.hung([0, 1], now=206)  # rank 0 stopped too: nothing advances anywhere
    assert set(hung) == {0, 1}
    assert "last in 'eval/sample' after training step 20" in hung[0]
    assert "nothing advanced for 56 s, last in 'train'" in hung[1]
    assert "--heartbeat-timeout 10" in hung[1]
    assert monitor.hung([0, 1], now=206, elsewhere=200) == {}  # another node advanced


def test_before_the_first_step_the_startup_timeout_applies(monitor):
    write_beat(monitor, 0, mono=50, phase="load")  # restoring a checkpoint, no step yet
    assert monitor.hung([0, 1], now=140) == {}
    hung = monitor.hung([0, 1], now=151)
    assert "last in 'load' before its first training step (--startup-timeout 100)" in hung[0]
    assert "nothing reported 151 s after the start" in hung[1]
    assert not monitor.trained([0, 1]) and monitor.last_step is None
    write_beat(monitor, 1, mono=150, step=7)
    assert monitor.trained([0, 1]) and monitor.last_step == 7


def test_a_new_attempt_forgets_the_old_beats(monitor):
    write_beat(monitor, 0, mono=1, step=5)
    assert monitor.trained([0])
    monitor.reset([0])
    assert read_beat(monitor.directory, 0) is None and not monitor.trained([0])
    assert monitor.last_step == 5  # the launch's newest step is kept across attempts


def test_folders_of_dead_launchers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"megagoku-heartbeats-{dead}-abcd"
    stale.mkdir()
    live = HeartbeatMonitor(timeout_s=1, startup_timeout_s=1, root=tmp_path)
    assert not stale.exists() and live.directory.is_dir()
    other = HeartbeatMonitor(timeout_s=1, startup_timeout_s=1, root=tmp_path)
    assert live.directory.is_dir()  # its launcher (this process) is alive
    other.close()
    live.close()
