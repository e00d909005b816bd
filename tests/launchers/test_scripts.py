"""The launcher scripts of `launchers/` start a short tiny training for real: torchrun, mpirun
(MPICH from the pinned requirements), and DeepSpeed's launcher with 2 CPU "GPUs", on one node and
on two "nodes" reached through a fake pdsh that does what pdsh's ssh module does (the command's
words joined into one string for each node's shell). Each ends with its final checkpoint written
by 2 ranks, and a `--set` value full of shell syntax arrives in the run's config literally, with
nothing run on the way."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megagoku.config.loader import parse_overrides
from tests.distributed.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PWNED = Path("/tmp/megagoku-launchers-test-PWNED")
HOSTILE_NAME = (f"name=my run $(touch {PWNED}) `touch {PWNED}` \"double\" 'single' ; "
                f"touch {PWNED}\nline two")
TRAIN = ["train", "--config", "configs/tiny.yaml"] + [
    a for kv in ("train.steps=2", "train.log_every=1", "data.tokens_per_step=512",
                 "model.depth=2", "train.max_minutes=0", HOSTILE_NAME) for a in ("--set", kv)]


def run(script: list[str], run_dir: Path, path: str = f"{BIN}:/usr/bin:/bin", **env) -> None:
    full_env = {"PATH": path, "HOME": str(Path.home()), "OMP_NUM_THREADS": "1",
                "PYTHON": sys.executable, "TOKENIZERS_PARALLELISM": "false",
                "MASTER_PORT": str(free_port()), **env}
    PWNED.unlink(missing_ok=True)
    proc = subprocess.run([*script, str(run_dir), "--", *TRAIN], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "step_00000002" / "manifest.json").is_file()
    state = json.loads((run_dir / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["world_size"] == 2, state["world_size"]
    config = yaml.safe_load((run_dir / "checkpoints" / "step_00000002" / "config.yaml")
                            .read_text())
    assert config["name"] == dict(parse_overrides([HOSTILE_NAME]))["name"]
    assert not PWNED.exists(), "a --set value ran as a shell command"


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


# pdsh as DeepSpeed calls it (`pdsh -S -f N -w host1,host2 CMD...`), doing what its ssh module
# does: the command's words joined with spaces into one string that each host's shell runs
# (`bash -c`), `%n` replaced by the host's index. ssh: the same for one host.
FAKE_PDSH = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do
    case "$1" in -S) shift ;; -f) shift 2 ;; -w) hosts=$2; shift 2 ;; *) break ;; esac
done
command="$*"
IFS=, read -ra list <<< "$hosts"
pids=()
for i in "${!list[@]}"; do bash -c "${command//%n/$i}" & pids+=($!); done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""
FAKE_SSH = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do case "$1" in -o|-p) shift 2 ;; -*) shift ;; *) break ;; esac; done
shift  # the host
exec bash -c "$*"
"""


@pytest.mark.slow
def test_deepspeed_script_on_two_nodes_runs_no_argument_as_a_command(tmp_path):
    """HOSTFILE with two hosts: DeepSpeed's pdsh runner builds one shell string per node; the
    arguments must cross it literally (run.sh sends them as one base64 word)."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, text in (("pdsh", FAKE_PDSH), ("ssh", FAKE_SSH)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    run(["launchers/deepspeed/run.sh"], tmp_path / "run", path=f"{fakes}:{BIN}:/usr/bin:/bin",
        HOSTFILE=str(hostfile), MASTER_ADDR="127.0.0.1", DEEPSPEED=str(BIN / "deepspeed"))
