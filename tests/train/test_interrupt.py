"""Stopping a run from outside (issue 22, cases 1 and 2), through the command line: Ctrl-C saves
at the end of the step and exits 75 like SIGTERM, a second Ctrl-C exits at once, a second
`megagoku train` on a live run dir is refused with one line naming the owner, and `--resume auto`
on a run without a checkpoint appends to its logs instead of deleting them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megagoku.config import load_training_config
from megagoku.train.checkpoint import find_checkpoint
from megagoku.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
LONG = ["train.steps=5000", "train.log_every=1", "model.depth=1", "train.max_minutes=0"]


def start(run_dir: Path, *sets: str, extra=()) -> subprocess.Popen:
    args = [sys.executable, "-m", "megagoku.cli", "train", "--config", "configs/tiny.yaml",
            "--run-dir", str(run_dir), *extra]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            "OMP_NUM_THREADS": "1"})


def wait_for_step(proc: subprocess.Popen, step: int, timeout: float = 120) -> list[str]:
    """Read stderr until the progress line of `step`; returns the lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if f"step {step}/" in line:
            return lines
    proc.kill()
    raise AssertionError("no progress line:\n" + "".join(lines[-20:]))


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_75_and_a_second_run_is_refused_meanwhile(tmp_path):
    owner = start(tmp_path, *LONG)
    try:
        wait_for_step(owner, 2)
        for extra in (["--resume", "auto"], ["--overwrite"]):
            rival = subprocess.run(
                [sys.executable, "-m", "megagoku.cli", "train", "--config", "configs/tiny.yaml",
                 "--run-dir", str(tmp_path), "--set", "train.steps=3", *extra],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
                env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
            assert rival.returncode == 2, rival.stderr[-2000:]
            assert rival.stderr.strip().splitlines()[-1].startswith(
                f"error: {tmp_path}: run dir is in use by host {socket.gethostname()} "
                f"pid {owner.pid}"), rival.stderr[-2000:]
            assert "Traceback" not in rival.stderr
        owner.send_signal(signal.SIGINT)  # Ctrl-C
        code, out, err = finish(owner)
    finally:
        owner.kill()
    assert code == 75, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "SIGINT received: checkpointing at the end of this step" in err
    saved = find_checkpoint(tmp_path)
    assert f"checkpoint: {saved}" in out
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps[-1] == int(saved.name.split("_")[1]) >= 2  # saved at the step it stopped
    resumed = start(tmp_path, *[s.replace("5000", str(steps[-1] + 2)) for s in LONG],
                    extra=["--resume", "auto"])
    code, out, err = finish(resumed)
    assert code == 0, err[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == list(range(1, steps[-1] + 1))  # continued from the checkpoint


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_without_saving(tmp_path):
    # Slow steps (a few per second at most), so that both signals land in one step.
    owner = start(tmp_path, *LONG, "data.tokens_per_step=32768", "model.depth=4")
    try:
        wait_for_step(owner, 1)
        owner.send_signal(signal.SIGINT)
        time.sleep(0.3)
        owner.send_signal(signal.SIGINT)
        code, out, err = finish(owner, timeout=30)
    finally:
        owner.kill()
    assert code == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "second interrupt: exiting now without saving"
    assert "Traceback" not in err
    assert not list((tmp_path / "checkpoints").glob("step_*"))


def test_resume_auto_without_a_checkpoint_appends_to_the_logs(tmp_path, monkeypatch):
    from tests.train.test_resume import Crash, crash_at

    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "train.steps=4", "train.log_every=1", "model.depth=1", "checkpoint.every=10",
        "train.max_minutes=0"])
    with monkeypatch.context() as m:
        crash_at(m, 3)  # before any checkpoint
        with pytest.raises(Crash):
            train(cfg, tmp_path)
    first = (tmp_path / "metrics.jsonl").read_text()
    events = sorted((tmp_path / "tensorboard").iterdir())
    assert [json.loads(line)["step"] for line in first.splitlines()] == [1, 2] and events
    result = train(cfg, tmp_path, resume="auto")
    assert result.steps == 4
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.startswith(first)  # the crashed attempt's records are kept, then the new run's
    assert [json.loads(line)["step"] for line in text.splitlines()] == [1, 2, 1, 2, 3, 4]
    assert set(events) < set((tmp_path / "tensorboard").iterdir())
