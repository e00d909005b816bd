"""Samples during training under layouts that split the model, on two gloo ranks: TP=2 (with
megatron SP), ZeRO-3 over both ranks, and Ulysses=2. Every rank takes part in gathering the EMA;
rank 0 alone generates, on a one-process copy, with exactly the EMA the checkpoint of the same
step holds; and a TP=2 or ZeRO-3 run ends bit-identical to the same run without samples.

All runs are made in one launch of two ranks (tests/distributed/samples_worker.py)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megagoku.train.checkpoint import CheckpointReader
from tests.distributed.launch import run_ranks
from tests.train.test_resume import assert_identical

STEPS = 4
RUN = [f"train.steps={STEPS}", "train.log_every=1", "train.warmup_steps=0",
       "train.max_minutes=0", "data.tokens_per_step=512", "model.depth=2",
       "train.ema_decay=0.9", "checkpoint.every=2", "checkpoint.keep_last=5"]
SAMPLES = ["sample.every=2", "sample.steps=2", "sample.upscale=1"]
LAYOUTS = {
    "tp2_megatron_sp": ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true"],
    "zero3": ["parallel.zero_stage=3"],
    "ulysses2": ["parallel.ulysses=2"],  # the EMA is whole on every rank: nothing gathered
}
WITHOUT_SAMPLES = ["tp2_megatron_sp", "zero3"]  # the layouts also run without samples


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples_layouts")
    spec = [{"dir": str(root / name), "sets": RUN + SAMPLES + sets}
            for name, sets in LAYOUTS.items()]
    spec += [{"dir": str(root / f"{name}_no_samples"), "sets": RUN + LAYOUTS[name]}
             for name in WITHOUT_SAMPLES]
    run_ranks(2, ["tests/distributed/samples_worker.py",
                  json.dumps({"weights": str(root / "generated_with"), "runs": spec})],
              timeout=900)
    return root


def tensors(run_dir: Path, step: int, prefix: str) -> dict[str, torch.Tensor]:
    return CheckpointReader(run_dir / "checkpoints" / f"step_{step:08d}").tensors(prefix)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rank_0_samples_with_exactly_the_ema_of_the_checkpoint(layout, runs):
    run = runs / layout
    folders = sorted(p.name for p in (run / "train_samples").iterdir())
    assert folders == ["step_00000002", "step_00000004"]
    for folder in folders:
        assert (run / "train_samples" / folder / "grid.png").is_file()
        assert len(list((run / "train_samples" / folder).glob("*.gif"))) == 4
    generated = runs / "generated_with" / layout
    assert sorted(p.name for p in generated.iterdir()) == [  # rank 0 alone generated
        "rank0_step_00000002.safetensors", "rank0_step_00000004.safetensors"]
    for step in (2, 4):
        weights = load_file(generated / f"rank0_step_{step:08d}.safetensors")
        ema, live = tensors(run, step, "ema"), tensors(run, step, "model")
        assert weights.keys() == ema.keys()
        different = [k for k in ema if not torch.equal(weights[k], ema[k])]
        assert not different, different[:4]
        # the EMA, not the live weights (ema_decay 0.9: they differ after a step)
        assert any(not torch.equal(weights[k], live[k]) for k in live)


@pytest.mark.slow
@pytest.mark.parametrize("layout", WITHOUT_SAMPLES)
def test_samples_leave_a_split_run_bit_identical(layout, runs):
    reference = runs / f"{layout}_no_samples"
    assert not (reference / "train_samples").exists()
    for step in (2, STEPS):
        sampled = CheckpointReader(runs / layout / "checkpoints" / f"step_{step:08d}")
        plain = CheckpointReader(reference / "checkpoints" / f"step_{step:08d}")
        assert_identical({k: sampled.tensor(k) for k in sampled.index},
                         {k: plain.tensor(k) for k in plain.index})
