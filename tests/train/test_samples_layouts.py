"""Samples during training under layouts that split the model, on two gloo ranks: TP=2 (with
megatron SP), ZeRO-3 over both ranks, and Ulysses=2; and evaluation during training
(`eval.every`) under ZeRO-3. Every rank takes part in gathering the EMA; rank 0 alone generates,
on a one-process copy, with exactly the EMA the checkpoint of the same step holds; and a TP=2
or ZeRO-3 run ends bit-identical to the same run without samples or evaluation. The evaluation
scores with an untrained classifier put in its cache (only the plumbing is tested here; the
scores themselves are tests/evaluation/'s).

All runs are made in one launch of two ranks (tests/distributed/samples_worker.py)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megagoku.config import load_training_config
from megagoku.evaluation.classifier import ClassifierSpec, ShapesClassifier, save_classifier
from megagoku.train.checkpoint import CheckpointReader
from tests.distributed.launch import ROOT, run_ranks
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
# Evaluation at the due steps, as small as the eval config allows: one clip per held-out prompt,
# no images.
EVAL = ["eval.every=2", "eval.samples=1", "eval.prompts=held_out", "eval.images=false",
        "sample.steps=2"]
EVALUATED = {"zero3_eval": "zero3"}  # run -> its layout (also run without samples)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples_layouts")
    spec = [{"dir": str(root / name), "sets": RUN + SAMPLES + sets}
            for name, sets in LAYOUTS.items()]
    spec += [{"dir": str(root / f"{name}_no_samples"), "sets": RUN + LAYOUTS[name]}
             for name in WITHOUT_SAMPLES]
    spec += [{"dir": str(root / name), "sets": RUN + EVAL + LAYOUTS[layout]}
             for name, layout in EVALUATED.items()]
    # an untrained classifier under the key of the runs' data: loaded, not trained
    classifier = ClassifierSpec.for_data(
        load_training_config(ROOT / "configs/tiny.yaml", RUN + EVAL).data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_classifier(ShapesClassifier(classifier), {}, classifier, root / "eval_cache")
    run_ranks(2, ["tests/distributed/samples_worker.py",
                  json.dumps({"weights": str(root / "generated_with"), "runs": spec})],
              timeout=900, extra_env={"MEGAGOKU_EVAL_CACHE": str(root / "eval_cache")})
    return root


def tensors(run_dir: Path, step: int, prefix: str) -> dict[str, torch.Tensor]:
    return CheckpointReader(run_dir / "checkpoints" / f"step_{step:08d}").tensors(prefix)


def assert_rank_0_alone_generated_with_the_ema(runs: Path, name: str, prefix: str = "") -> None:
    """At steps 2 and 4, rank 0 alone generated (`prefix`: "" samples, "eval_" evaluations),
    with exactly the EMA of the checkpoint of that step."""
    generated = runs / "generated_with" / name
    assert sorted(p.name for p in generated.iterdir()) == [
        f"{prefix}rank0_step_00000002.safetensors", f"{prefix}rank0_step_00000004.safetensors"]
    for step in (2, 4):
        weights = load_file(generated / f"{prefix}rank0_step_{step:08d}.safetensors")
        ema, live = tensors(runs / name, step, "ema"), tensors(runs / name, step, "model")
        assert weights.keys() == ema.keys()
        different = [k for k in ema if not torch.equal(weights[k], ema[k])]
        assert not different, different[:4]
        # the EMA, not the live weights (ema_decay 0.9: they differ after a step)
        assert any(not torch.equal(weights[k], live[k]) for k in live)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rank_0_samples_with_exactly_the_ema_of_the_checkpoint(layout, runs):
    run = runs / layout
    folders = sorted(p.name for p in (run / "train_samples").iterdir())
    assert folders == ["step_00000002", "step_00000004"]
    for folder in folders:
        assert (run / "train_samples" / folder / "grid.png").is_file()
        assert len(list((run / "train_samples" / folder).glob("*.gif"))) == 4
    assert_rank_0_alone_generated_with_the_ema(runs, layout)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EVALUATED))
def test_rank_0_evaluates_at_the_due_steps_with_exactly_the_ema_of_the_checkpoint(name, runs):
    run = runs / name
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["step_00000002",
                                                               "step_00000004"]
    for step in (2, 4):
        report = json.loads((run / "eval" / f"step_{step:08d}" / "eval.json").read_text())
        assert report["step"] == step
        assert {s["kind"] for s in report["samples"]} == {"video"}  # eval.images=false
        assert {s["split"] for s in report["samples"]} == {"held_out"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/fd_shapes3d_video" in r] == [2, 4]
    assert not (run / "train_samples").exists()
    assert_rank_0_alone_generated_with_the_ema(runs, name, prefix="eval_")


@pytest.mark.slow
@pytest.mark.parametrize("run, reference", [
    *[(name, f"{name}_no_samples") for name in WITHOUT_SAMPLES],
    *[(name, f"{layout}_no_samples") for name, layout in EVALUATED.items()]])
def test_samples_and_evaluation_leave_a_split_run_bit_identical(run, reference, runs):
    assert not (runs / reference / "train_samples").exists()
    assert not (runs / reference / "eval").exists()
    for step in (2, STEPS):
        generated = CheckpointReader(runs / run / "checkpoints" / f"step_{step:08d}")
        plain = CheckpointReader(runs / reference / "checkpoints" / f"step_{step:08d}")
        assert_identical({k: generated.tensor(k) for k in generated.index},
                         {k: plain.tensor(k) for k in plain.index})
