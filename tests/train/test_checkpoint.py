import json
import logging

import pytest
import torch

from megagoku.train.checkpoint import (CheckpointError, find_checkpoint, load_checkpoint,
                                       save_checkpoint)


def save(run_dir, step, value):
    weights = {"w": torch.full((3,), float(value))}
    return save_checkpoint(run_dir, step, weights, {"w": weights["w"] * 2}, {"name": "x"},
                           {"loader": {"next_index": step}})


def test_save_and_load_round_trip(tmp_path):
    path = save(tmp_path, 10, 1.5)
    config, state, ckpt = load_checkpoint(tmp_path, "model")
    assert ckpt == path and config == {"name": "x"}
    torch.testing.assert_close(state["w"], torch.full((3,), 1.5))
    _, ema, _ = load_checkpoint(path, "ema")
    torch.testing.assert_close(ema["w"], torch.full((3,), 3.0))
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))


def test_broken_newest_checkpoint_falls_back_to_last_good_one(tmp_path, caplog):
    good = save(tmp_path, 10, 1.0)
    bad = save(tmp_path, 20, 2.0)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint(tmp_path) == good
    assert "step_00000020/model.safetensors" in caplog.text
    with pytest.raises(CheckpointError, match="bytes, manifest says"):
        find_checkpoint(bad)


def test_altered_or_unfinished_checkpoints_are_rejected(tmp_path):
    ckpt = save(tmp_path, 5, 1.0)
    (ckpt / "config.yaml").write_text("name: y\n")  # same size, other bytes: the checksum
    with pytest.raises(CheckpointError, match="config.yaml"):
        find_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="every checkpoint is broken"):
        find_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        find_checkpoint(tmp_path / "empty")


def test_resaving_a_step_replaces_it_and_stale_temporaries_are_cleared(tmp_path):
    save(tmp_path, 7, 1.0)
    stale = tmp_path / "checkpoints" / ".tmp_step_00000003"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    path = save(tmp_path, 7, 2.0)
    _, state, _ = load_checkpoint(path, "model")
    torch.testing.assert_close(state["w"], torch.full((3,), 2.0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000007"]


def test_manifest_that_omits_a_file_is_rejected(tmp_path):
    ckpt = save(tmp_path, 3, 1.0)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    del manifest["ema.safetensors"]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="incomplete manifest"):
        find_checkpoint(ckpt)
    (ckpt / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="incomplete manifest"):
        find_checkpoint(ckpt)
