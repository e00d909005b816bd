"""Image-to-video training and sampling: an I2V model initialised from a T2V run starts as that
model (its new input weights at zero), learns to use the first frame, resumes bit-identically,
and `megagoku sample --image` animates a given frame (a T2V model refuses one in one line)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from megagoku.config import ModelConfig
from megagoku.models import build_model
from megagoku.parallel import ensure_single_process_groups
from megagoku.train.checkpoint import CheckpointReader, find_checkpoint
from megagoku.optim import EMA
from megagoku.train.train_state import restore_weights
from megagoku.train.trainer import train
from tests.train.test_resume import (ROOT, Crash, assert_identical, config, crash_at,
                                     final_tensors)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2v")
    train(config(), root / "t2v")
    i2v = [f"checkpoint.init_from={root / 't2v'}", "model.image_condition=true",
           "data.image_fraction=0.5", "train.image_dropout=0.3"]
    train(config(*i2v), root / "i2v")
    return root, i2v


def test_an_i2v_model_starts_as_the_t2v_model(runs):
    root, _ = runs
    ensure_single_process_groups()
    reader = CheckpointReader(find_checkpoint(root / "t2v"))
    model = build_model(config("model.image_condition=true").model)
    torch.nn.init.normal_(model.cond_embed.weight)  # restore must leave the fresh weight alone
    fresh = model.cond_embed.weight.detach().clone()
    ema = EMA(model, 0.9)
    restore_weights(model, ema, reader, fresh=model.new_input_weights())
    for name, tensor in model.weights().items():
        if name == "cond_embed.weight":
            assert torch.equal(tensor, fresh) and torch.equal(ema.shadow[name], fresh)
        else:
            assert torch.equal(tensor, reader.tensor(f"model/{name}")), name
            assert torch.equal(ema.shadow[name], reader.tensor(f"ema/{name}")), name
    with pytest.raises(Exception, match="cond_embed"):  # only for names declared fresh
        restore_weights(model, ema, reader)


def test_the_i2v_run_learns_to_use_the_first_frame(runs):
    root, _ = runs
    final = final_tensors(root / "i2v")
    assert final["model/cond_embed.weight"].abs().max() > 0  # was zero at the start
    assert "optim.exp_avg/cond_embed.weight" in final


def test_an_i2v_run_resumes_bit_identical(runs, tmp_path, monkeypatch):
    root, i2v = runs
    crash_at(monkeypatch, 5)
    with pytest.raises(Crash):
        train(config(*i2v), tmp_path)
    monkeypatch.undo()
    train(config(*i2v), tmp_path, resume="auto")
    assert_identical(final_tensors(tmp_path), final_tensors(root / "i2v"))


def sample(checkpoint, out, *extra):
    return subprocess.run([sys.executable, "-m", "megagoku", "sample", "--checkpoint",
                           str(checkpoint), "--prompt", "a red circle moving left", "--out",
                           str(out), "--steps", "2", "--device", "cpu", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_sample_animates_a_given_first_frame(runs, tmp_path):
    root, _ = runs
    frame = np.zeros((32, 24, 3), np.uint8)
    frame[8:20, 6:18] = (220, 30, 30)
    Image.fromarray(frame).save(tmp_path / "first.png")
    with_image = sample(root / "i2v", tmp_path / "a.gif", "--image", str(tmp_path / "first.png"))
    assert with_image.returncode == 0, with_image.stderr[-2000:]
    without = sample(root / "i2v", tmp_path / "b.gif")
    assert without.returncode == 0, without.stderr[-2000:]
    a = np.asarray(Image.open(tmp_path / "a.gif").convert("RGB"))
    b = np.asarray(Image.open(tmp_path / "b.gif").convert("RGB"))
    assert a.shape == b.shape and not np.array_equal(a, b)  # the frame changes the video
    refused = sample(root / "t2v", tmp_path / "c.gif", "--image", str(tmp_path / "first.png"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --image {tmp_path / 'first.png'}: an image was given but this model has no "
        "image conditioning (train an I2V model: model.image_condition: true)")
    missing = sample(root / "i2v", tmp_path / "d.gif", "--image", str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "nope.png: no such file" in missing.stderr


def test_flops_count_the_first_frame_embedding():
    from megagoku.models.flops import flops_per_token

    plain = ModelConfig(depth=2, hidden_size=64, num_heads=4)
    i2v = ModelConfig(depth=2, hidden_size=64, num_heads=4, image_condition=True)
    extra = flops_per_token(i2v, 64, 8)["forward"] - flops_per_token(plain, 64, 8)["forward"]
    assert extra == pytest.approx(2 * plain.patch_dim * plain.hidden_size)


def test_eval_scores_image_to_video(runs, tmp_path):
    import json

    root, _ = runs
    proc = subprocess.run([sys.executable, "-m", "megagoku", "eval", "--run-dir",
                           str(root / "i2v"), "--image-to-video", "1", "--steps", "2",
                           "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "i2v.json").read_text())
    assert report["image_conditioned"] and report["cases"] == 4
    assert {r["direction"] for r in report["results"]} == {"left", "right", "up", "down"}
    assert "image-to-video, 4 videos: colour kept" in proc.stdout
