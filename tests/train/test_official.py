"""`megagoku convert --format goku-official`: a checkpoint's blocks under Goku's released names and
shapes, ours under ours, in one safetensors file that maps back to the checkpoint's exact bits,
samples the same videos, and initialises a run as the checkpoint does; a file without our config
gets one from `--config`; the earlier megagoku block has no official layout."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from megagoku.cli import main
from megagoku.config import ConfigError
from megagoku.config.schema import LEGACY_BLOCK
from megagoku.inference import load_generator
from megagoku.train.checkpoint import (CheckpointError, CheckpointReader, find_checkpoint,
                                       load_checkpoint, open_weights, weights_kind)
from megagoku.train.export import consolidate
from megagoku.train.official import OfficialFileReader, write_official
from megagoku.train.trainer import train
from tests.train.test_resume import assert_identical, config, final_tensors

LEGACY_SETTINGS = [f"model.{key}={str(value).lower()}" for key, value in LEGACY_BLOCK.items()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(config(), path)
    return path


def test_the_file_has_the_released_names_and_maps_back_to_the_same_bits(run_dir, tmp_path, capsys):
    out = tmp_path / "goku.safetensors"
    assert main(["convert", "--format", "goku-official", "--input", str(run_dir), "--output",
                 str(out)]) == 0
    assert "goku-official layout" in capsys.readouterr().out
    stored = load_file(out)
    dim = 128
    assert stored["blocks.1.norm1.linear.weight"].shape == (6 * dim, dim)
    assert stored["blocks.0.attn1.q_proj.weight"].shape == (dim, dim)
    assert stored["blocks.0.attn2.k_proj.weight"].shape == (dim, 384)
    assert stored["blocks.0.attn1.q_norm.weight"].shape == (dim,)  # 4 heads x 32
    assert stored["blocks.0.norm3.weight"].shape == (dim,)
    assert "patch_embed.weight" in stored and not any(".qkv." in k or ".adaln." in k
                                                        for k in stored if k.startswith("blocks."))
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    reader = CheckpointReader(find_checkpoint(run_dir))
    assert meta["format"] == "goku-official" and meta["weights"] == "ema" and meta["step"] == "6"
    assert json.loads(meta["config"]) == reader.config
    # ours -> official -> ours: the checkpoint's EMA, bit for bit.
    assert_identical(OfficialFileReader(out).tensors("ema"), reader.tensors("ema"))
    # From a model directory too, in bf16: the same bits as the directory's.
    model_dir = consolidate(run_dir, tmp_path / "dir", weights="model", dtype="bfloat16",
                            progress=False)
    half = write_official(model_dir, tmp_path / "half.safetensors", progress=False)
    assert_identical(OfficialFileReader(half).tensors("model"),
                     open_weights(model_dir).tensors("model"))
    with pytest.raises(FileExistsError):
        write_official(run_dir, half, progress=False)
    # The file says which weights it holds, and a kind it lacks is refused, not substituted.
    assert weights_kind(half) == "model"
    with pytest.raises(ValueError, match="holds model weights only"):
        weights_kind(half, "ema")
    with pytest.raises(ValueError, match="holds model weights only"):
        write_official(model_dir, tmp_path / "as_ema.safetensors", weights="ema", progress=False)
    # The file is no input for a model directory: one line that says where it is read instead.
    with pytest.raises(ValueError, match="a file; convert reads .* read an official-layout"):
        consolidate(half, tmp_path / "again", progress=False)


def test_the_file_samples_and_initialises_as_the_checkpoint(run_dir, tmp_path):
    out = write_official(run_dir, tmp_path / "ema.safetensors", progress=False)
    videos = []
    for path in (run_dir, out):
        cfg, state, _ = load_checkpoint(path, "ema")
        generator = load_generator(cfg, state, str(path), device="cpu")
        videos.append(generator.generate(["a red circle moving left"], 8, 16, 16, steps=2,
                                         cfg_scale=2.0))
    assert torch.equal(videos[0][0], videos[1][0])
    raw = write_official(run_dir, tmp_path / "model.safetensors", weights="model", progress=False)
    train(config(f"checkpoint.init_from={find_checkpoint(run_dir)}"), tmp_path / "a")
    train(config(f"checkpoint.init_from={raw}"), tmp_path / "b")
    assert_identical(final_tensors(tmp_path / "a"), final_tensors(tmp_path / "b"))
    with pytest.raises(ConfigError, match="init_optimizer: .* is a model directory"):
        train(config(f"checkpoint.init_from={raw}", "checkpoint.init_optimizer=true"),
              tmp_path / "c")


def test_a_file_without_our_config_gets_one(run_dir, tmp_path, capsys):
    out = write_official(run_dir, tmp_path / "ema.safetensors", progress=False)
    bare = tmp_path / "released.safetensors"
    save_file(load_file(out), bare, metadata={"format": "goku-official"})
    with pytest.raises(CheckpointError, match="no megagoku config in its metadata.*--config"):
        OfficialFileReader(bare)
    cfg_file = tmp_path / "model.yaml"
    cfg_file.write_text("model:\n  preset: models/tiny.yaml\n  depth: 2\n")
    named = tmp_path / "named.safetensors"
    assert main(["convert", "--format", "goku-official", "--input", str(bare), "--config",
                 str(cfg_file), "--output", str(named)]) == 0
    assert_identical(OfficialFileReader(named).tensors("ema"),
                     OfficialFileReader(out).tensors("ema"))
    capsys.readouterr()
    assert main(["convert", "--input", str(run_dir), "--config", str(cfg_file), "--output",
                 str(tmp_path / "x")]) != 0
    assert "error: --config goes with --format goku-official" in capsys.readouterr().err


def test_the_earlier_block_has_no_official_layout(tmp_path, capsys):
    run = tmp_path / "legacy"
    train(config(*LEGACY_SETTINGS, "train.steps=2", "checkpoint.every=2"), run)
    assert main(["convert", "--format", "goku-official", "--input", str(run), "--output",
                 str(tmp_path / "x.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "official layout holds Goku's released block" in err and "qk_norm=per_head" in err
    assert not (tmp_path / "x.safetensors").exists()
