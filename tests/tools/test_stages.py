"""`megagoku stages` end to end on the tiny plan: every stage trains in its own directory from the
stage before (weights, and optimizer where the plan says), a second run of the plan skips what is
done, and `--only` reruns one stage."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FAST = [a for kv in ("train.steps=3", "train.log_every=1", "model.depth=2",
                     "data.tokens_per_step=512") for a in ("--set", kv)]


def stages(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megagoku", "stages", "--config",
                           "configs/stages/tiny.yaml", "--run-dir", str(run_dir), *FAST, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_tiny_plan_runs_every_stage_from_the_one_before(tmp_path):
    proc = stages(tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = ["t2i", "joint_8", "joint_16", "t2v_ft", "t2i_ft"]
    for name in names:
        assert (tmp_path / name / "checkpoints" / "step_00000003" / "manifest.json").is_file()
    written = {n: yaml.safe_load((tmp_path / n / "stage.yaml").read_text()) for n in names}
    assert written["t2i"]["checkpoint"]["init_from"] is None
    assert written["joint_8"]["checkpoint"]["init_from"] == str(
        tmp_path / "t2i" / "checkpoints" / "step_00000003")
    assert written["joint_8"]["checkpoint"]["init_optimizer"] is True
    for ft in ("t2v_ft", "t2i_ft"):  # both fine-tunings from the last joint stage
        assert written[ft]["checkpoint"]["init_from"].startswith(str(tmp_path / "joint_16"))
        assert written[ft]["checkpoint"]["init_optimizer"] is False
    assert written["joint_16"]["data"]["height"] == 16 and written["t2i"]["data"]["height"] == 8
    assert "initialised from" in proc.stderr and "(weights and optimizer)" in proc.stderr
    # Each stage's metrics start at its own step 1, at its own learning rate.
    first = json.loads((tmp_path / "t2v_ft" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["lr"] < 3e-4

    again = stages(tmp_path)
    assert again.returncode == 0 and again.stderr.count(": done (") == 5, again.stderr[-3000:]

    shutil.rmtree(tmp_path / "t2v_ft")
    only = stages(tmp_path, "--only", "t2v_ft")
    assert only.returncode == 0, only.stderr[-3000:]
    assert "stage t2v_ft" in only.stderr and "stage t2i_ft" not in only.stderr
    assert (tmp_path / "t2v_ft" / "checkpoints" / "step_00000003").is_dir()


def test_a_stage_whose_start_is_missing_stops_the_plan(tmp_path):
    proc = stages(tmp_path, "--only", "joint_8")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: configs/stages/tiny.yaml: stage 'joint_8' starts from stage 't2i', which has no "
        f"final checkpoint (step 3) in {tmp_path / 't2i'}")
    assert not (tmp_path / "joint_8").exists()
