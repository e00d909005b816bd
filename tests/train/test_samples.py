"""Samples during training: grids land in TensorBoard and the run dir at `sample.every`, and a run
with samples ends bit-identical to one without (the sampler works on a copy of the model)."""

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megagoku.config import ConfigError, load_training_config
from megagoku.train.trainer import train
from tests.train.test_resume import ROOT, assert_identical, config, final_tensors


def test_sample_grids_every_n_steps_leave_training_untouched(tmp_path):
    train(config(), tmp_path / "plain")
    train(config("sample.every=3", "sample.steps=2", "sample.upscale=2"), tmp_path / "sampled")
    assert_identical(final_tensors(tmp_path / "sampled"), final_tensors(tmp_path / "plain"))
    folders = sorted(p.name for p in (tmp_path / "sampled" / "train_samples").iterdir())
    assert folders == ["step_00000003", "step_00000006"]
    out = tmp_path / "sampled" / "train_samples" / "step_00000006"
    prompts = (out / "prompts.txt").read_text().splitlines()
    assert prompts == ["a red square moving up", "a green triangle moving left",
                       "a red circle moving right", "a blue square moving left"]
    grid = np.asarray(Image.open(out / "grid.png"))
    # 4 prompts of 16x16 pixels x2, 8 frames side by side, 2-pixel gaps.
    assert grid.shape == (4 * 32 + 3 * 2, 8 * 32 + 7 * 2, 3)
    assert len(list(out.glob("*.gif"))) == 4
    events = EventAccumulator(str(tmp_path / "sampled" / "tensorboard"),
                              size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("samples")] == [3, 6]


def test_sample_every_without_prompts_needs_the_shapes_data():
    with pytest.raises(ConfigError, match="sample.prompts: sample.every needs prompts"):
        load_training_config(ROOT / "configs/tiny_latent.yaml", ["sample.every=10"])
