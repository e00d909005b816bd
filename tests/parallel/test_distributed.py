"""Distributed start from each launcher: the environment each sets (parsed), and real starts of
two gloo ranks through torchrun, the deepspeed launcher, srun's variables, and mpirun."""

import re
import subprocess
import sys
from pathlib import Path

from megagoku.parallel.distributed import discover, first_host, strip_local_rank
from tests.distributed.launch import ROOT, free_port, run_ranks

WORKER = "tests/parallel/start_worker.py"
BIN = Path(sys.executable).parent


def test_torchrun_environment():
    env = dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="node7", MASTER_PORT="1234",
               TORCHELASTIC_RUN_ID="x")
    info = discover(env, ["train"])
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.master_addr,
            info.master_port) == ("torchrun", 3, 8, 1, "node7", 1234)


def test_deepspeed_launcher_passes_local_rank_in_argv():
    env = dict(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="n0", MASTER_PORT="29500")
    info = discover(env, ["megagoku", "--local_rank=1", "train"])
    assert (info.launcher, info.rank, info.local_rank) == ("deepspeed", 5, 1)
    assert strip_local_rank(["--local_rank=1", "train", "--local_rank", "2", "x"]) == ["train", "x"]


def test_srun_environment_and_node_lists():
    env = dict(SLURM_STEP_ID="0", SLURM_PROCID="6", SLURM_STEP_NUM_TASKS="16", SLURM_NTASKS="16",
               SLURM_LOCALID="2", SLURM_STEP_NODELIST="gpu[017-018,020],login1",
               SLURM_JOB_ID="4242")
    info = discover(env, [])
    assert (info.launcher, info.rank, info.world_size, info.local_rank) == ("srun", 6, 16, 2)
    assert info.master_addr == "gpu017" and info.master_port == 12000 + 4242
    assert first_host("c1") == "c1"
    assert first_host("node-[3,7-9]") == "node-3"
    # the batch script itself (no job step) is one process, not rank 0 of the job
    assert discover(dict(SLURM_PROCID="0", SLURM_NTASKS="16"), []).launcher == "none"


def test_mpirun_environment_without_mpi4py():
    env = dict(OMPI_COMM_WORLD_RANK="2", OMPI_COMM_WORLD_SIZE="4",
               OMPI_COMM_WORLD_LOCAL_RANK="0", MASTER_ADDR="head")
    info = discover(env, [], use_mpi4py=False)
    assert (info.launcher, info.rank, info.world_size, info.master_addr) == ("mpirun", 2, 4, "head")


def test_nothing_is_one_process():
    info = discover({}, ["megagoku"])
    assert (info.launcher, info.rank, info.world_size) == ("none", 0, 1)


def started(outputs: list[str], launcher: str, world: int = 2) -> None:
    pattern = r"START launcher=\S+ rank=\d+ world=\d+ local=\d+ sum=\d+"
    lines = sorted(line for out in outputs for line in re.findall(pattern, out))
    assert lines == [f"START launcher={launcher} rank={r} world={world} local={r} sum=1"
                     for r in range(world)], outputs


def run(cmd: list[str], timeout: float = 240) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_torchrun_starts_two_ranks():
    out = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_port()}", WORKER])
    started(out.split("\n"), "torchrun")


def test_deepspeed_launcher_starts_two_ranks():
    out = run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               WORKER])
    started(out.split("\n"), "deepspeed")


def test_srun_variables_start_two_ranks():
    def srun_env(rank, port):
        return dict(SLURM_STEP_ID="0", SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="2",
                    SLURM_LOCALID=str(rank), SLURM_STEP_NODELIST="localhost",
                    MASTER_PORT=str(port))
    started(run_ranks(2, [WORKER], rank_env=srun_env, timeout=120), "srun")


def test_mpirun_starts_two_ranks():  # mpich (pinned) installs mpirun into the venv
    out = run([str(BIN / "mpirun"), "-n", "2", "-env", "MASTER_PORT", str(free_port()),
               sys.executable, WORKER])
    started(out.split("\n"), "mpirun")
