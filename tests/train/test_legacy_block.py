"""Checkpoints and model directories written before the block keys existed (their saved config
has no model.attn_norm / qk_norm / mlp_norm_gain / modulation_fp32) hold the earlier megagoku
block: they load and sample as that block, exactly as a checkpoint that names it, and a run
initialised from one must name it too."""

import json
import shutil

import pytest
import torch
import yaml

from megagoku.config.schema import LEGACY_BLOCK
from megagoku.inference import load_generator
from megagoku.train.checkpoint import (CheckpointError, find_checkpoint, load_checkpoint,
                                       sha256_of)
from megagoku.train.export import consolidate
from megagoku.train.trainer import train
from tests.train.test_resume import config

LEGACY_SETTINGS = [f"model.{key}={str(value).lower()}" for key, value in LEGACY_BLOCK.items()]
RUN = ["train.steps=2", "checkpoint.every=2"]


def make_old(checkpoint) -> None:
    """Rewrite a checkpoint's config as the code before the block keys wrote it (every field it
    had, none of the four), with the manifest's checksum to match."""
    config_file = checkpoint / "config.yaml"
    saved = yaml.safe_load(config_file.read_text())
    for key in LEGACY_BLOCK:
        del saved["model"][key]
    config_file.write_text(yaml.safe_dump(saved, sort_keys=False))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["config.yaml"] = {"bytes": config_file.stat().st_size,
                               "sha256": sha256_of(config_file)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest, indent=1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a run of the earlier block that names it, the same run as an old checkpoint)."""
    named = tmp_path_factory.mktemp("named")
    train(config(*LEGACY_SETTINGS, *RUN), named)
    old = tmp_path_factory.mktemp("old") / "run"
    shutil.copytree(named, old)
    make_old(find_checkpoint(old))
    return named, old


def sample(path):
    cfg, state, _ = load_checkpoint(path, "ema")
    generator = load_generator(cfg, state, str(path), device="cpu")
    return generator, generator.generate(["a blue square moving up"], 8, 16, 16, steps=2,
                                         cfg_scale=2.0)[0]


def test_an_old_checkpoint_and_its_model_directory_sample_as_the_earlier_block(runs, tmp_path):
    named, old = runs
    assert "qk_norm" not in yaml.safe_load((find_checkpoint(old) / "config.yaml").read_text())[
        "model"]
    _, expected = sample(named)
    generator, video = sample(old)
    model = generator.config.model
    assert {key: getattr(model, key) for key in LEGACY_BLOCK} == LEGACY_BLOCK
    assert generator.model.blocks[0].attn.q_norm.weight.shape == (model.head_dim,)
    assert torch.equal(video, expected)
    model_dir = consolidate(old, tmp_path / "dir", progress=False)
    assert "qk_norm" not in json.loads((model_dir / "config.json").read_text())["config"]["model"]
    assert torch.equal(sample(model_dir)[1], expected)


def test_a_run_from_an_old_checkpoint_must_name_the_earlier_block(runs, tmp_path):
    _, old = runs
    with pytest.raises(CheckpointError, match="blocks.0.attn.q_norm.weight \\[32\\] vs \\[128\\].*"
                                              "the checkpoint holds megagoku's earlier block: "
                                              "--set model.attn_norm=rms --set model.qk_norm="
                                              "per_head --set model.mlp_norm_gain=false --set "
                                              "model.modulation_fp32=false; else"):
        train(config(*RUN, f"checkpoint.init_from={old}"), tmp_path / "released")
    train(config(*RUN, *LEGACY_SETTINGS, f"checkpoint.init_from={old}"), tmp_path / "earlier")
