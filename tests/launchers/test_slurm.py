"""`launchers/slurm/*.sbatch` on a real Slurm cluster on this machine (two emulated nodes, started
by `launchers/slurm/local_cluster.sh start`; `.ci/run` starts and stops it): train.sbatch trains
the tiny model on 2 nodes x 1 process and 1 node x 2 processes, srun.sbatch and deepspeed.sbatch
on 2 nodes; a job preempted with USR1 checkpoints, requeues itself, resumes, and ends
bit-identical to a job that ran straight through."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megagoku.launch.events import read_events
from megagoku.train.checkpoint import CheckpointReader, find_checkpoint
from tests.distributed.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "launchers" / "slurm" / "train.sbatch"
TRAIN = ["train", "--config", "configs/tiny.yaml"] + [
    a for kv in ("data.tokens_per_step=512", "model.depth=2", "train.log_every=10",
                 "train.max_minutes=0", "checkpoint.every=40") for a in ("--set", kv)]


def idle_nodes() -> int:
    if shutil.which("sinfo") is None:
        return 0
    proc = subprocess.run(["sinfo", "-h", "-t", "idle", "-o", "%D"], capture_output=True,
                          text=True)
    return sum(int(x) for x in proc.stdout.split() if x.isdigit()) if proc.returncode == 0 else 0


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if idle_nodes() < 2:
        message = ("no local Slurm cluster with 2 idle nodes "
                   "(launchers/slurm/local_cluster.sh start)")
        if os.environ.get("MEGAGOKU_REQUIRE_SLURM") == "1":
            pytest.fail(message)  # CI started one: its absence is a failure, not a skip
        pytest.skip(message)


def sbatch(run_dir: Path, nodes: int, nproc: int, steps: int, wait: bool = True,
           script: Path = SBATCH):
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = (f"ALL,MEGAGOKU={sys.executable} -m megagoku,NPROC_PER_NODE={nproc},"
           f"DEEPSPEED={bin_dir / 'deepspeed'},PATH={bin_dir}:/usr/bin:/bin,"
           f"MASTER_PORT={free_port()},OMP_NUM_THREADS=1,PYTHONUNBUFFERED=1")
    tasks = nproc if script.name == "srun.sbatch" else 1  # srun.sbatch: a task per rank
    cmd = ["sbatch", "--parsable", f"--nodes={nodes}", f"--ntasks-per-node={tasks}",
           f"--output={run_dir}.out",
           f"--export={env}", *(["--wait"] if wait else []), str(script), str(run_dir), "--",
           *TRAIN, "--set", f"train.steps={steps}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return proc, Path(f"{run_dir}.out")


def log_of(out: Path) -> str:
    return out.read_text() if out.exists() else "(no job output)"


def events(run_dir: Path) -> list[dict]:
    return read_events(run_dir)  # every node's file, merged


def final_tensors(run_dir: Path, steps: int) -> dict:
    reader = CheckpointReader(find_checkpoint(run_dir))
    assert reader.step == steps
    return {k: reader.tensor(k) for k in reader.index}


@pytest.mark.slow
@pytest.mark.parametrize("nodes, nproc", [(2, 1), (1, 2)])
def test_sbatch_trains_on_nodes_x_processes(tmp_path, nodes, nproc):
    run_dir = tmp_path / "run"
    proc, out = sbatch(run_dir, nodes, nproc, steps=8)
    assert proc.returncode == 0, proc.stderr + log_of(out)[-4000:]
    assert f"{nodes} node(s) x {nproc} process(es)" in log_of(out)
    started = next(e for e in events(run_dir) if e["event"] == "training_started")
    assert started["world_size"] == 2
    assert (run_dir / "checkpoints" / "step_00000008" / "manifest.json").is_file()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text()
             .splitlines()]
    assert steps == [8]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["srun.sbatch", "deepspeed.sbatch"])
def test_the_other_sbatch_scripts_train_on_two_nodes(tmp_path, script):
    """One task per node started by srun itself, or by DeepSpeed's launcher over a hostfile."""
    run_dir = tmp_path / "run"
    proc, out = sbatch(run_dir, 2, 1, steps=4, script=SBATCH.parent / script)
    assert proc.returncode == 0, proc.stderr + log_of(out)[-4000:]
    assert "x 2 processes" in log_of(out)
    state = json.loads((run_dir / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert state["world_size"] == 2


@pytest.mark.slow
def test_a_preempted_job_checkpoints_requeues_and_resumes_bit_identical(tmp_path):
    steps = 120
    straight, out = sbatch(tmp_path / "straight", 1, 1, steps)
    assert straight.returncode == 0, log_of(out)[-4000:]

    run_dir = tmp_path / "preempted"
    proc, out = sbatch(run_dir, 1, 1, steps, wait=False)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # past the first checkpoint, well before the end
        try:
            if json.loads(metrics.read_text().splitlines()[-1])["step"] >= 50:
                break
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    else:
        pytest.fail("the job never reached step 50:\n" + log_of(out)[-3000:])
    # What Slurm does before a preemption or the time limit (--signal=B:USR1@...), at once.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if not queued.stdout.strip() and (run_dir / "checkpoints" / f"step_{steps:08d}").is_dir():
            break
        time.sleep(1)
    log = log_of(out)
    assert "requeueing job" in log and "(restart 1)" in log, log[-4000:]
    stopped = [e for e in events(run_dir) if e["event"] == "checkpoint_committed"]
    resumed = next(e for e in events(run_dir) if e["event"] == "resumed")
    assert resumed["step"] >= 50 and any(e["step"] == resumed["step"] for e in stopped)
    a, b = final_tensors(run_dir, steps), final_tensors(tmp_path / "straight", steps)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed job differs from the straight one"


@pytest.mark.slow
def test_a_node_that_keeps_failing_is_excluded_and_the_job_resubmitted(tmp_path):
    """The first node the job lands on is broken (its workers die as they start, exit 3, as on a
    bad GPU): the launcher retries once, gives up on the same start-up failure, and the batch
    script submits the job again without that node; the new job trains on the other node from
    the same run dir."""
    marker = tmp_path / "broken-node"
    fault = tmp_path / "fault"  # a sitecustomize that ends every worker (RANK set) with 3
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(
        "import os, sys\nif 'RANK' in os.environ:\n    sys.exit(3)\n")
    wrapper = tmp_path / "megagoku-on-a-broken-node"
    wrapper.write_text(f"""#!/bin/bash
# The first node to run this is broken: the workers its launcher starts exit 3 at once.
[ -f {marker} ] || echo "$SLURMD_NODENAME" > {marker}
if [ "$(cat {marker})" = "$SLURMD_NODENAME" ]; then
    export PYTHONPATH={fault}${{PYTHONPATH:+:$PYTHONPATH}}
fi
exec {sys.executable} -m megagoku "$@"
""")
    wrapper.chmod(0o755)
    run_dir = tmp_path / "run"
    env = (f"ALL,MEGAGOKU={wrapper},NPROC_PER_NODE=1,MAX_RESTARTS=1,OMP_NUM_THREADS=1,"
           "PYTHONUNBUFFERED=1")
    proc = subprocess.run(["sbatch", "--parsable", "--nodes=1", f"--output={run_dir}.out",
                           f"--export={env}", str(SBATCH), str(run_dir), "--", *TRAIN,
                           "--set", "train.steps=4"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    deadline = time.time() + 600
    while time.time() < deadline:  # the job, then the one it submits without the broken node
        queued = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True)
        if "megagoku" not in queued.stdout and \
                (run_dir / "checkpoints" / "step_00000004").is_dir():
            break
        time.sleep(1)
    log = log_of(Path(f"{run_dir}.out"))
    broken = marker.read_text().strip()
    assert f"node(s) {broken} failed repeatedly: resubmitted as job" in log, log[-4000:]
    assert int(job) > 0
    assert (run_dir / "checkpoints" / "step_00000004" / "manifest.json").is_file(), log[-4000:]
    trained_on = {e["node"] for e in events(run_dir) if e["event"] == "training_started"}
    assert trained_on and broken not in trained_on


@pytest.mark.slow
def test_curation_runs_as_a_job_array_and_a_merge_job(tmp_path):
    """launchers/slurm/curate.sh: 2 shard tasks, then the merge job once both succeeded; the
    merged funnel counts both shards, and the manifest holds their clips."""
    from megagoku.curation.synthetic import write_demo_inputs

    inputs = write_demo_inputs(tmp_path / "in")
    out = tmp_path / "out"
    env = {**os.environ, "MEGAGOKU": f"{sys.executable} -m megagoku", "OMP_NUM_THREADS": "1",
           "WAIT": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "SBATCH_ARGS": f"--output={tmp_path}/%x-%A_%a.out --cpus-per-task=1"}
    proc = subprocess.run([str(ROOT / "launchers/slurm/curate.sh"), str(out), "2", "--",
                           "--config", "configs/curate/tiny.yaml", "--input", str(inputs)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["0000-of-0002", "0001-of-0002"]
    assert "shard 0/2" in logs and "shard 1/2" in logs and "merges the shards" in logs
    report = json.loads((out / "report.json").read_text())
    funnel = {s["stage"]: s for s in report}
    assert funnel["probe"]["inputs"] == 10 and funnel["probe"]["shards"] == 2
    assert funnel["export"]["kept"] == len((out / "manifest.jsonl").read_text().splitlines()) > 0
