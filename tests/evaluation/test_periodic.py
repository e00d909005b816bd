"""Evaluation during training: `eval.every` scores land in metrics.jsonl, TensorBoard and the run
dir, and a run with evaluation ends bit-identical to one without (the evaluator works on a copy
of the model, with its own random streams)."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagoku.config import ConfigError, load_training_config
from megagoku.train.trainer import train
from tests.train.test_resume import ROOT, assert_identical, config, final_tensors


def test_eval_every_n_steps_leaves_training_untouched(tmp_path, classifier_cache):
    evaluated = config("eval.every=3", "eval.samples=2", "eval.prompts=held_out",
                       "sample.steps=2")
    classifier_cache(evaluated.data)  # an untrained classifier: no training here
    train(config(), tmp_path / "plain")
    train(evaluated, tmp_path / "evaluated")
    assert_identical(final_tensors(tmp_path / "evaluated"), final_tensors(tmp_path / "plain"))

    run = tmp_path / "evaluated"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/fd_shapes3d_video" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for key in ("eval/video/held_out/classifier_all", "eval/video/held_out/pixel_direction",
                "eval/image/seen/classifier_shape", "eval/fd_shapes3d_image",
                "eval/fd_floor_video"):
        assert key in evals[0], key
    assert not any("eval/video/seen/classifier_all" in r for r in records)  # held_out only
    report = json.loads((run / "eval" / "step_00000006" / "eval.json").read_text())
    assert report["step"] == 6
    assert len(report["samples"]) == 4 * 2 + 12 * 2  # 4 held-out prompts, 12 image captions
    assert {s["split"] for s in report["samples"] if s["kind"] == "video"} == {"held_out"}
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/fd_shapes3d_video")] == [3, 6]


def test_eval_config_is_checked():
    with pytest.raises(ConfigError, match="eval.samples: must be positive, got 0"):
        load_training_config(ROOT / "configs/tiny.yaml", ["eval.samples=0"])
    with pytest.raises(ConfigError, match="eval.prompts: expected one of"):
        load_training_config(ROOT / "configs/tiny.yaml", ["eval.prompts=some"])
    with pytest.raises(ConfigError, match="eval.every: evaluation during training reads"):
        load_training_config(ROOT / "configs/tiny_latent.yaml", ["eval.every=10"])
