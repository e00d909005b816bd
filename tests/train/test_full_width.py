"""Goku-2B's width on 4 gloo ranks (issue 19): configs/full_width_cpu.yaml (1792 wide, 28 heads,
T5 features 2048 wide, 16 latent channels, patch 1x2x2) at depth 1 here, on the seeded stand-ins
of `megagoku stand-ins`. Under ZeRO-3 and under TP=2 x ZeRO-2, a run saves an asynchronous
checkpoint at step 1 and ends at step 2; that checkpoint resumed on 4 ranks ends bit-identical to
the uninterrupted run, and resumed on 2 ranks it loads and trains on.

Slow: each launch builds and steps an 82M-parameter model on 4 processes of a 2-core machine."""

import json
import math
from pathlib import Path

import pytest

from megagoku.train.checkpoint import CheckpointReader
from tests.distributed.launch import ROOT, run_ranks

pytestmark = pytest.mark.slow

CONFIG = "configs/full_width_cpu.yaml"
LAYOUTS = {"zero3": ["parallel.zero_stage=3"],
           "tp2_zero2": ["parallel.tensor_parallel=2", "parallel.zero_stage=2"]}
RUN = ["model.depth=1", "train.steps=2", "checkpoint.every=1", "checkpoint.async_save=true",
       "train.max_minutes=0", "train.log_every=1", "sample.every=0"]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> list[str]:
    """The seeded text encoder, VAE and cache, written once (overrides naming them)."""
    root = tmp_path_factory.mktemp("stand-ins")
    sets = [f"text.encoder={root / 'text-encoder'}", f"latent.path={root / 'vae'}",
            f"data.cache={root / 'cache'}"]
    from megagoku.cli import main
    args = ["stand-ins", "--config", str(ROOT / CONFIG), "--records", "16"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    return sets


def train(ranks: int, run_dir: Path, sets: list[str], resume: Path | None = None) -> None:
    args = ["-m", "megagoku", "train", "--config", CONFIG, "--run-dir", str(run_dir),
            *[a for s in sets for a in ("--set", s)]]
    # (PATH stays: DeepSpeed may compile its shared-memory comm op with the system's c++)
    run_ranks(ranks, args + (["--resume", str(resume)] if resume else []), timeout=300,
              extra_env={"PYTHONPATH": str(ROOT)})


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def differing(ours: Path, reference: Path) -> list[str]:
    """The tensors of two checkpoints that are not bit-identical (read one pair at a time)."""
    a, b = CheckpointReader(ours), CheckpointReader(reference)
    assert a.index.keys() == b.index.keys()
    return [key for key in b.index if not a.tensor(key).equal(b.tensor(key))]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_full_width_resumes_bit_exactly_on_4_ranks_and_continues_on_2(layout, stand_ins,
                                                                       tmp_path):
    sets = [*stand_ins, *RUN, *LAYOUTS[layout]]
    whole = tmp_path / "uninterrupted"
    train(4, whole, sets)
    saved = whole / "checkpoints" / "step_00000001"
    final = whole / "checkpoints" / "step_00000002"
    reference = CheckpointReader(final)
    # the whole model's weights, EMA and both AdamW moments, at Goku-2B's width
    assert reference.tensor("model/blocks.0.mlp.fc1.weight").shape == (7168, 1792)
    assert reference.tensor("model/blocks.0.cross_attn.kv.weight").shape == (3584, 2048)
    assert {k.split("/")[0] for k in reference.index} == {"model", "ema", "optim.exp_avg",
                                                          "optim.exp_avg_sq"}

    resumed = tmp_path / "resumed-4"
    train(4, resumed, sets, resume=saved)
    assert losses(resumed) == {2: losses(whole)[2]}
    differ = differing(resumed / "checkpoints" / "step_00000002", final)
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"

    # 2 ranks: ZeRO-3 over 2, or TP=2 alone; another data-parallel count, so other batches
    # (the resume matrix's `samples` promise): the checkpoint loads and the run trains on.
    halved = tmp_path / "resumed-2"
    train(2, halved, sets, resume=saved)
    got = losses(halved)
    assert list(got) == [2] and math.isfinite(got[2])
    state = CheckpointReader(halved / "checkpoints" / "step_00000002").state
    assert state["saved_under"]["world_size"] == 2 and state["loader"]["replicas"] == \
        (2 if layout == "zero3" else 1)
