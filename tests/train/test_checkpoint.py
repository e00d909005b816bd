"""The checkpoint format: parts written by several ranks, committed by rank 0 with a manifest,
verified on load (truncated, altered, unfinished or unlisted files are rejected), the newest valid
one found, old ones pruned, and the asynchronous writer's failures contained."""

import errno
import json
import logging

import pytest
import torch

import megagoku.train.checkpoint as checkpoint
from megagoku.train.checkpoint import (CheckpointError, CheckpointReader, assign_writers, commit,
                                       find_checkpoint, load_checkpoint, prune, remove_stale_parts,
                                       write_rank_part)
from megagoku.train.checkpointer import Checkpointer

WORLD = 2


def tensors(value):
    """Logical tensors of a two-tensor model, weights, EMA and moments."""
    out = {}
    for name, shape in (("a", (4, 3)), ("b", (5,))):
        out[f"model/{name}"] = torch.full(shape, float(value))
        out[f"ema/{name}"] = torch.full(shape, 2.0 * value)
        out[f"optim.exp_avg/{name}"] = torch.full(shape, 0.1 * value)
    return out


def save(run_dir, step, value, world=WORLD):
    """What `world` ranks do for one save, one rank after the other."""
    root = run_dir / "checkpoints"
    everything = tensors(value)
    owner = assign_writers({k: v.numel() * 4 for k, v in everything.items()}, world)
    for rank in range(world):
        part = {k: v for k, v in everything.items() if owner[k] == rank}
        write_rank_part(root / f".tmp_step_{step:08d}", rank, world, part, {"rank": rank})
    return commit(root, step, world, {"name": "x"}, {"loader": {"next_index": step}},
                  timeout_s=5)


def test_parts_of_every_rank_commit_into_one_checkpoint(tmp_path):
    path = save(tmp_path, 10, 1.5)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.yaml", "manifest.json", "rank-00000-of-00002.safetensors",
        "rank-00001-of-00002.safetensors", "state.json"]
    config, state, ckpt = load_checkpoint(tmp_path, "model")
    assert ckpt == path and config == {"name": "x"}
    assert state.keys() == {"a", "b"}
    torch.testing.assert_close(state["a"], torch.full((4, 3), 1.5))
    reader = CheckpointReader(path)
    assert reader.step == 10 and reader.state["loader"] == {"next_index": 10}
    assert reader.state["rng"] == [{"rank": 0}, {"rank": 1}]
    assert set(reader.index.values()) == {"rank-00000-of-00002.safetensors",
                                          "rank-00001-of-00002.safetensors"}
    torch.testing.assert_close(reader.tensor("optim.exp_avg/b"), torch.full((5,), 0.15))
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))


def test_writers_are_balanced_and_agree():
    sizes = {f"t{i}": size for i, size in enumerate([100, 90, 50, 40, 30, 10, 10])}
    owner = assign_writers(sizes, 3)
    assert owner == assign_writers(dict(reversed(sizes.items())), 3)  # same on every rank
    loads = [sum(sizes[n] for n, r in owner.items() if r == rank) for rank in range(3)]
    assert max(loads) - min(loads) <= 20, loads


def test_broken_newest_checkpoint_falls_back_to_last_good_one(tmp_path, caplog):
    good = save(tmp_path, 10, 1.0)
    bad = save(tmp_path, 20, 2.0)
    part = bad / "rank-00001-of-00002.safetensors"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint(tmp_path) == good
    assert "step_00000020/rank-00001-of-00002.safetensors" in caplog.text
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


def test_manifest_that_omits_a_file_is_rejected(tmp_path):
    ckpt = save(tmp_path, 3, 1.0)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    del manifest["rank-00001-of-00002.safetensors"]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no entry for rank-00001-of-00002.safetensors"):
        find_checkpoint(ckpt)
    (ckpt / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="incomplete manifest"):
        find_checkpoint(ckpt)


def test_a_missing_rank_part_is_never_committed(tmp_path):
    root = tmp_path / "checkpoints"
    write_rank_part(root / ".tmp_step_00000004", 0, WORLD, tensors(1.0), {})
    with pytest.raises(CheckpointError, match=r"rank-00001.json missing after 0 s\); not committed"):
        commit(root, 4, WORLD, {}, {}, timeout_s=0.05)
    assert not (root / "step_00000004").exists()
    # A rank that failed says so: rank 0 stops waiting at once.
    (root / ".tmp_step_00000004" / "rank-00001.failed").write_text(json.dumps("disk full"))
    with pytest.raises(CheckpointError, match="disk full; not committed"):
        commit(root, 4, WORLD, {}, {}, timeout_s=60)
    remove_stale_parts(root)
    assert not list(root.iterdir())


def test_resaving_a_step_replaces_it(tmp_path):
    save(tmp_path, 7, 1.0)
    path = save(tmp_path, 7, 2.0)
    _, state, _ = load_checkpoint(path, "ema")
    torch.testing.assert_close(state["b"], torch.full((5,), 4.0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000007"]


def test_prune_keeps_the_newest_and_every_mth(tmp_path):
    for step in range(1, 8):
        save(tmp_path, step, 1.0, world=1)
    removed = prune(tmp_path / "checkpoints", keep_last=2, keep_every=3)
    assert [p.name for p in removed] == ["step_00000001", "step_00000002", "step_00000004",
                                         "step_00000005"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000003", "step_00000006", "step_00000007"]


@pytest.mark.parametrize("async_save", [True, False])
def test_a_full_disk_loses_that_save_only(tmp_path, monkeypatch, async_save):
    saver = Checkpointer(tmp_path, 0, 1, async_save=async_save)
    saver.persist(1, tensors(1.0), {}, {"name": "x"}, {"loader": {}})
    assert saver.wait().name == "step_00000001"
    real_save_file = checkpoint.save_file

    def full_disk(tensors, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    saver.persist(2, tensors(2.0), {}, {"name": "x"}, {"loader": {}})
    with pytest.raises(CheckpointError, match="step 2 not saved .*No space left on device"):
        saver.wait()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]
    assert find_checkpoint(tmp_path).name == "step_00000001"
    monkeypatch.setattr(checkpoint, "save_file", real_save_file)
    saver.persist(3, tensors(3.0), {}, {"name": "x"}, {"loader": {}})  # space again: saves
    assert saver.wait().name == "step_00000003" and len(saver.stats.failed) == 1
