"""Weights load strictly (issue 22, case 11): resuming, or starting a new stage, into a model
that differs from the checkpoint's is one error naming what does not match, both ways (tensors
the model has no place for, tensors the checkpoint lacks, shapes), instead of a run that logs
"resumed" and silently drops blocks; `checkpoint.partial_weights` is the explicit partial load,
which logs what is dropped."""

import logging
from pathlib import Path

import pytest
import torch

from megagoku.config import ConfigError, load_training_config
from megagoku.train.checkpoint import CheckpointError, CheckpointReader, find_checkpoint
from megagoku.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
RUN = ["train.steps=1", "train.max_minutes=0", "data.tokens_per_step=512"]


def config(*extra):
    return load_training_config(ROOT / "configs/tiny.yaml", RUN + list(extra))


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A depth-3 run."""
    run_dir = tmp_path_factory.mktemp("deep")
    train(config("model.depth=3"), run_dir)
    return run_dir


def test_resume_into_a_shallower_model_names_the_blocks_it_would_drop(deep):
    with pytest.raises(CheckpointError) as error:
        train(config("model.depth=2", "train.steps=2"), deep, resume="auto")
    message = str(error.value)
    assert "does not fit this model" in message and "\n" not in message
    assert "tensors of the checkpoint have no place in this model (blocks.2.*)" in message
    assert find_checkpoint(deep).name == "step_00000001"  # the run dir is left as it was


def test_init_from_a_deeper_or_a_shallower_model_is_refused_both_ways(deep, tmp_path):
    with pytest.raises(CheckpointError, match=r"have no place in this model \(blocks\.2\.\*\).*"
                                              r"checkpoint.partial_weights"):
        train(config("model.depth=2", f"checkpoint.init_from={deep}"), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"tensors of the model are not in the checkpoint "
                                              r"\(blocks\.3\.\*\)"):
        train(config("model.depth=4", f"checkpoint.init_from={deep}"), tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"shapes differ \(checkpoint vs model: "
                                              r"blocks\.0\.mlp\.fc1\.weight \[512, 128\] vs "
                                              r"\[256, 128\]"):
        train(config("model.depth=3", "model.mlp_ratio=2", f"checkpoint.init_from={deep}"),
              tmp_path / "c")


def test_a_deliberate_partial_load_logs_what_it_drops(deep, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    result = train(config("model.depth=2", f"checkpoint.init_from={deep}",
                          "checkpoint.partial_weights=true", "train.lr=1e-12"), tmp_path)
    assert "partial load (checkpoint.partial_weights)" in caplog.text and "blocks.2.*" in caplog.text
    source, ours = CheckpointReader(find_checkpoint(deep)), CheckpointReader(result.checkpoint)
    assert torch.allclose(ours.tensor("model/blocks.1.mlp.fc1.weight"),  # one step of lr 1e-12
                          source.tensor("model/blocks.1.mlp.fc1.weight"), atol=1e-9)
    assert not ours.has("model/blocks.2.mlp.fc1.weight")


def test_partial_weights_with_init_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="partial_weights: cannot be combined with "
                                          "init_optimizer"):
        config("checkpoint.partial_weights=true", "checkpoint.init_optimizer=true",
               "checkpoint.init_from=x")
