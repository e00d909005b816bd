"""The launcher scripts of `launchers/` start a short tiny training for real: torchrun, mpirun
(MPICH from the pinned requirements), and DeepSpeed's launcher with 2 CPU "GPUs". Each ends with
its final checkpoint written by 2 ranks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRAIN = ["train", "--config", "configs/tiny.yaml"] + [
    a for kv in ("train.steps=2", "train.log_every=1", "data.tokens_per_step=512",
                 "model.depth=2", "train.max_minutes=0") for a in ("--set", kv)]


def run(script: list[str], run_dir: Path, **env) -> None:
    full_env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(Path.home()), "OMP_NUM_THREADS": "1",
                "PYTHON": sys.executable, "TOKENIZERS_PARALLELISM": "false",
                "MASTER_PORT": str(free_port()), **env}
    proc = subprocess.run([*script, str(run_dir), "--", *TRAIN], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "step_00000002" / "manifest.json").is_file()
    state = json.loads((run_dir / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["world_size"] == 2, state["world_size"]


@pytest.mark.slow
def test_torchrun_script(tmp_path):
    run(["launchers/torchrun.sh", "2"], tmp_path / "run")


@pytest.mark.slow
def test_mpirun_script(tmp_path):
    run(["launchers/mpirun.sh", "2"], tmp_path / "run", MPIRUN=str(BIN / "mpirun"))


@pytest.mark.slow
def test_deepspeed_script(tmp_path):
    run(["launchers/deepspeed/run.sh"], tmp_path / "run", NUM_GPUS="2",
        DEEPSPEED=str(BIN / "deepspeed"))
