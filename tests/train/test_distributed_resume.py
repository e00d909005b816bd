"""Checkpoints reshard: saved under TP=2 or Ulysses x ZeRO-3 on two gloo processes, a run resumes
on one process (and the reverse) and ends where the uninterrupted one-process run ends, weights,
EMA and optimizer moments alike (up to the float summation order of the parallel layout)."""

from pathlib import Path

import pytest
import torch

from megagoku.config import load_training_config
from megagoku.train.checkpoint import CheckpointReader
from tests.distributed.launch import ROOT, torchrun_train, train_as_a_rank
from tests.train.float_order import assert_equal_up_to_float_order

RUN = ["train.steps=6", "train.log_every=1", "train.warmup_steps=2", "train.min_lr_ratio=0.1",
       "train.max_minutes=0", "data.tokens_per_step=512", "model.depth=2", "train.ema_decay=0.9",
       "checkpoint.every=3"]
PEAK_LR = 2.0e-3  # configs/tiny.yaml's train.lr
LAYOUTS = {
    "tp2": ["parallel.tensor_parallel=2"],
    "ulysses2_zero3": ["parallel.ulysses=2", "parallel.zero_stage=3"],
}


def torchrun(run_dir: Path, sets: list[str], resume: str | None = None) -> None:
    torchrun_train(run_dir, RUN + sets, ["--resume", resume] if resume else [])


def step_tensors(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(run_dir / "checkpoints" / f"step_{step:08d}")
    return {key: reader.tensor(key) for key in reader.index}


def assert_close(ours: dict, reference: dict) -> None:
    # the second moment is tiny (~1e-6): relative to its own scale
    assert_equal_up_to_float_order(ours, reference, PEAK_LR, rtol=1e-3)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one")
    train_as_a_rank(load_training_config(ROOT / "configs/tiny.yaml", RUN), run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_saved_on_two_ranks_resumes_on_one(layout, one_process, tmp_path):
    torchrun(tmp_path / "two", LAYOUTS[layout])
    assert_close(step_tensors(tmp_path / "two", 6), step_tensors(one_process, 6))
    train_as_a_rank(load_training_config(ROOT / "configs/tiny.yaml", RUN), tmp_path / "one",
                    resume=str(tmp_path / "two" / "checkpoints" / "step_00000003"))
    assert_close(step_tensors(tmp_path / "one", 6), step_tensors(one_process, 6))


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_saved_on_one_rank_resumes_on_two(layout, one_process, tmp_path):
    torchrun(tmp_path, LAYOUTS[layout],
             resume=str(one_process / "checkpoints" / "step_00000003"))
    assert_close(step_tensors(tmp_path, 6), step_tensors(one_process, 6))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000006"]
