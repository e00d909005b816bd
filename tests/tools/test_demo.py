"""`megagoku demo` stopped by SIGTERM (issue 22, case 5): it must not sample the half-trained
model and report that as the demo's result."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.train.test_interrupt import wait_for_step

ROOT = Path(__file__).resolve().parents[2]


def test_a_demo_stopped_by_sigterm_samples_nothing_and_asks_to_be_rerun(tmp_path):
    run_dir = tmp_path / "demo"
    args = [sys.executable, "-m", "megagoku.cli", "demo", "--config", "configs/tiny.yaml",
            "--run-dir", str(run_dir)]
    for s in ("train.steps=5000", "train.log_every=1", "model.depth=1", "train.max_minutes=0"):
        args += ["--set", s]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            "OMP_NUM_THREADS": "1"})
    try:
        wait_for_step(proc, 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("demo stopped by a stop signal at step ") and "not sampled" in last
    assert "colour right" not in out and not (run_dir / "samples").exists()
    assert list((run_dir / "checkpoints").glob("step_*"))  # the stop saved, as training's does
