"""`megagoku launch` on two gloo ranks: a command that can never start is restarted up to
--max-restarts with backoff, then the launcher fails with a message naming the rank and exit code,
and the event log and summary say so.

Not here yet: the fault matrix (a rank killed at a random step, a hung rank, SIGUSR1 then a
truncated checkpoint, each ending bit-identical to the uninterrupted run). A group restarted by
the agent inside one launch currently fails to rebuild its gloo groups (connection refused to the
previous attempt's addresses); see the open training-system issue."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
TRAIN = ["train", "--config", "configs/tiny.yaml"] + [
    a for kv in (f"train.steps={STEPS}", "train.log_every=1", "train.warmup_steps=2",
                 "train.max_minutes=0", "data.tokens_per_step=512", "model.depth=2",
                 "train.ema_decay=0.9", "checkpoint.every=2", "checkpoint.keep_last=10")
    for a in ("--set", kv)]
ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "HOME": str(Path.home()), "PYTHONUNBUFFERED": "1"}


def start(run_dir: Path, *options: str, command=TRAIN) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "megagoku", "launch", "--nproc-per-node", "2", "--run-dir",
         str(run_dir), "--backoff", "0.2", "--monitor-interval", "0.2", *options, "--",
         *command], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def finish(proc: subprocess.Popen, expected: int = 0) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expected, out[-5000:]
    return out


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_a_command_that_cannot_start_fails_after_the_restarts(tmp_path):
    proc = start(tmp_path, "--max-restarts", "1",
                 command=["train", "--config", str(tmp_path / "missing.yaml")])
    out = finish(proc, expected=1)
    assert "launch failed after 2 attempt(s)" in out and "rank 0 exited with 2" in out
    kinds = [e["event"] for e in events(tmp_path)]
    assert kinds.count("failure") == 2 and kinds.count("restart") == 1
