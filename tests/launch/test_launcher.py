"""`megagoku launch` on two gloo ranks, and the fault matrix of the training-system issue.

A command that can never start is restarted up to --max-restarts with backoff, then the launcher
fails with a message naming the rank and exit code. Each fault (kill -9 of a rank at a random step,
a rank that hangs, SIGUSR1 then a truncated newest checkpoint) ends at the final step with weights,
EMA and optimizer moments bit-identical to the uninterrupted run, and a committed checkpoint is
never lost. The disk filling up during a save is `tests/train/test_checkpoint.py`'s
`test_a_full_disk_loses_that_save_only` (no process needed to fill a disk)."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
STEPS = 24
TRAIN = ["train", "--config", "configs/tiny.yaml"] + [
    a for kv in (f"train.steps={STEPS}", "train.log_every=1", "train.warmup_steps=2",
                 "train.max_minutes=0", "data.tokens_per_step=512", "model.depth=2",
                 "train.ema_decay=0.9", "checkpoint.every=4", "checkpoint.keep_last=10")
    for a in ("--set", kv)]
ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "HOME": str(Path.home()), "PYTHONUNBUFFERED": "1"}


def start(run_dir: Path, *options: str, command=TRAIN) -> subprocess.Popen:
    """The launcher, its output in run_dir/launch.log (a pipe could fill while a test waits)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "launch.log", "a")
    return subprocess.Popen(
        [sys.executable, "-m", "megagoku", "launch", "--nproc-per-node", "2", "--run-dir",
         str(run_dir), "--backoff", "0.2", "--monitor-interval", "0.2", *options, "--",
         *command], cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, expected: int = 0) -> str:
    try:
        proc.wait(timeout=600)
    finally:
        proc.kill()
    out = Path(proc.args[proc.args.index("--run-dir") + 1], "launch.log").read_text()
    assert proc.returncode == expected, out[-5000:]
    return out


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def beat(run_dir: Path, rank: int) -> dict:
    try:
        return json.loads((run_dir / "heartbeats" / f"rank-{rank:05d}.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_until_step(proc: subprocess.Popen, run_dir: Path, rank: int, step: int) -> dict:
    """Rank's heartbeat once it has passed `step` and the first checkpoint is committed (so that
    the fault is recovered by a resume, not by a fresh start)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        hb = beat(run_dir, rank)
        if hb.get("step", -1) >= step and (run_dir / "checkpoints" / "step_00000004").is_dir():
            return hb
        assert proc.poll() is None, "the launcher ended before the fault was injected"
        time.sleep(0.02)
    raise AssertionError(f"rank {rank} never reached step {step}")


def final_state(run_dir: Path, step: int = STEPS) -> dict:
    """Every tensor of the checkpoint of `step` (default: the final one): weights, EMA, AdamW
    moments, all ranks' files."""
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    tensors = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        tensors.update(load_file(f))
    assert tensors, f"no final checkpoint in {ckpt}"
    return tensors


def assert_bit_identical(run_dir: Path, reference: dict) -> None:
    got = final_state(run_dir)
    assert got.keys() == reference.keys()
    differ = [k for k in got if not got[k].equal(reference[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    finish(start(run_dir))
    return final_state(run_dir)


def test_a_command_that_cannot_start_fails_after_the_restarts(tmp_path):
    proc = start(tmp_path, "--max-restarts", "1",
                 command=["train", "--config", str(tmp_path / "missing.yaml")])
    out = finish(proc, expected=1)
    # Both ranks exit with 2; whichever the agent sees first is named, the other was stopped.
    assert "launch failed after 2 attempt(s)" in out
    assert re.search(r"last failure: .*rank [01] exited with 2", out), out[-2000:]
    kinds = [e["event"] for e in events(tmp_path)]
    assert kinds.count("failure") == 2 and kinds.count("restart") == 1


@pytest.mark.slow
def test_kill_9_of_a_rank_at_a_random_step_resumes_bit_identical(tmp_path, uninterrupted):
    step = random.Random().randint(5, 14)
    proc = start(tmp_path, "--max-restarts", "2")
    hb = wait_until_step(proc, tmp_path, 1, step)
    os.kill(hb["pid"], signal.SIGKILL)
    out = finish(proc)
    assert "launch succeeded after 2 attempt(s); 1 failure(s)" in out, (step, out[-3000:])
    log = events(tmp_path)
    failure = next(e for e in log if e["event"] == "failure")
    assert failure["exit_codes"]["1"] == -signal.SIGKILL
    resumed = next(e for e in log if e["event"] == "resumed")
    assert 4 <= resumed["step"] <= hb["step"] + 1
    assert_bit_identical(tmp_path, uninterrupted)


@pytest.mark.slow
def test_a_hung_rank_is_detected_killed_and_restarted_bit_identical(tmp_path, uninterrupted):
    proc = start(tmp_path, "--max-restarts", "1", "--heartbeat-timeout", "6")
    hb = wait_until_step(proc, tmp_path, 1, 6)
    os.kill(hb["pid"], signal.SIGSTOP)  # alive, silent: no exit code would ever show it
    try:
        out = finish(proc)
    finally:
        try:
            os.kill(hb["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    hang = next(e for e in events(tmp_path) if e["event"] == "hang")
    assert "no heartbeat" in hang["ranks"]["1"], hang
    assert "launch succeeded after 2 attempt(s)" in out
    assert_bit_identical(tmp_path, uninterrupted)


@pytest.mark.slow
def test_sigusr1_saves_and_requeues_then_a_truncated_checkpoint_is_skipped(tmp_path,
                                                                          uninterrupted):
    proc = start(tmp_path)
    wait_until_step(proc, tmp_path, 0, 9)
    proc.send_signal(signal.SIGUSR1)  # as Slurm does before preemption
    out = finish(proc, expected=75)
    assert "launch requeue" in out
    stopped = [e for e in events(tmp_path) if e["event"] == "checkpoint_committed"][-1]
    newest = Path(stopped["path"])
    assert newest.is_dir() and stopped["step"] >= 9
    # The disk lost the end of a file of the newest checkpoint: the requeued job must report it
    # and resume from the one before, never load it.
    part = sorted(newest.glob("*.safetensors"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    before = len((tmp_path / "launch.log").read_text())
    out = finish(start(tmp_path))[before:]
    assert f"{newest.name}" in out and "launch succeeded" in out, out[-3000:]
    resumed = [e for e in events(tmp_path) if e["event"] == "resumed"][-1]
    assert resumed["step"] < stopped["step"]
    assert_bit_identical(tmp_path, uninterrupted)


@pytest.mark.slow
def test_rollbacks_restart_at_once_without_spending_restarts(tmp_path):
    """Loss spikes (a low spike factor makes them frequent) roll back through `megagoku launch`:
    each exits 76, the agent restarts at once with no restart budget at all (--max-restarts 0),
    and the run ends bit-identical to a one-process run told to skip the same steps."""
    from megagoku.config import load_training_config
    from megagoku.train.anomaly import SKIP_FILE, add_skip_steps, read_skip_steps
    from megagoku.train.trainer import train

    spiky = ["train.steps=12", "checkpoint.every=2", "train.anomaly_response=rollback",
             "train.spike_factor=1.001", "train.spike_window=1", "train.max_anomalies=12",
             "train.warmup_steps=0"]
    command = TRAIN + [a for kv in spiky for a in ("--set", kv)]  # later --set wins
    launched = tmp_path / "launched"
    proc = start(launched, "--nproc-per-node", "1", "--max-restarts", "0", command=command)
    # start() launches 2 ranks by default; --nproc-per-node given twice: the last one counts.
    out = finish(proc)
    skipped = read_skip_steps(launched)
    rollbacks = [e for e in events(launched) if e["event"] == "rollback"]
    assert skipped and len(rollbacks) == len(skipped), out[-3000:]
    assert "launch succeeded" in out and all(e["exit_codes"] == {"0": 76} for e in rollbacks)

    reference = tmp_path / "reference"
    add_skip_steps(reference, skipped, "told to")
    overrides = [kv for kv in spiky if not kv.startswith(("train.anomaly", "train.spike"))]
    train_args = [TRAIN[i + 1] for i in range(3, len(TRAIN), 2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched worker (OMP_NUM_THREADS=1): the same float sums
    try:
        train(load_training_config(ROOT / "configs/tiny.yaml", train_args + overrides),
              reference, resume="auto")
    finally:
        torch.set_num_threads(threads)
    assert (reference / SKIP_FILE).exists()
    got, want = final_state(launched, 12), final_state(reference, 12)
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in got)

