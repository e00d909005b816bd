import os
from pathlib import Path

from megagoku.config import ParallelConfig, load_training_config
from megagoku.parallel import ensure_single_process_groups, initialize_groups
from megagoku.train.trainer import train
from tests.distributed.launch import ROOT


def gloo_loop_threads() -> int:
    """This process's gloo tcp Loop threads: one per gloo group, each waking every 10 ms."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    return sum((task / "comm").read_text().strip() == "gloo_tcp_loop" for task in tasks.iterdir())


def test_the_same_grid_again_reuses_its_groups_instead_of_leaking_them(tmp_path):
    """megatron forgets its groups without ending them: rebuilt for every run, a process that
    trains in turn (the test suite's) gained 17 polling threads a run."""
    ensure_single_process_groups()
    initialize_groups(ParallelConfig())
    threads = gloo_loop_threads()
    initialize_groups(ParallelConfig())
    cfg = load_training_config(ROOT / "configs/tiny.yaml", ["train.steps=1", "sample.every=0"])
    for run in ("a", "b"):
        train(cfg, tmp_path / run)
    assert gloo_loop_threads() == threads
