"""Exact resume on one process: a run interrupted after a checkpoint and resumed ends with the
bit-identical weights, EMA and optimizer state of the uninterrupted run; broken checkpoints are
passed over; asynchronous and synchronous saves write the same bytes."""

import json
from pathlib import Path

import pytest
import torch

import megagoku.parallel.engine as engine_module
from megagoku.config import ConfigError, load_training_config
from megagoku.train.checkpoint import CheckpointReader, find_checkpoint
from megagoku.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
# Cosine LR with warm-up, EMA and a shuffle window: every piece of state matters.
RUN = ["train.steps=6", "train.log_every=1", "train.warmup_steps=2", "train.min_lr_ratio=0.1",
       "train.max_minutes=0", "data.tokens_per_step=512", "model.depth=2", "train.ema_decay=0.9",
       "data.pack_window=4", "checkpoint.every=2", "checkpoint.keep_last=5"]


def config(*extra):
    return load_training_config(ROOT / "configs/tiny.yaml", RUN + list(extra))


class Crash(RuntimeError):
    pass


def crash_at(monkeypatch, step: int) -> None:
    """The optimizer step of training step `step` raises, as a killed process would stop."""
    calls = {"n": 0}
    original = engine_module.TrainEngine.step

    def step_or_crash(self):
        calls["n"] += 1
        if calls["n"] == step:
            raise Crash(f"crash at step {step}")
        return original(self)

    monkeypatch.setattr(engine_module.TrainEngine, "step", step_or_crash)


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(find_checkpoint(run_dir))
    assert reader.step == 6
    return {key: reader.tensor(key) for key in reader.index}


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, (sorted({k.split("/")[0] for k in different}),
                           [(k, float((a[k] - b[k]).abs().max())) for k in different[:3]])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    train(config(), run_dir)
    return run_dir


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl")
                                               .read_text().splitlines())}


def test_resumed_run_is_bit_identical_to_the_uninterrupted_one(uninterrupted, tmp_path,
                                                               monkeypatch):
    with monkeypatch.context() as m:
        crash_at(m, 5)
        with pytest.raises(Crash):
            train(config(), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["step_00000002", "step_00000004"]
    result = train(config(), tmp_path, resume="auto")
    assert result.steps == 6 and result.checkpoint.name == "step_00000006"
    assert_identical(final_tensors(tmp_path), final_tensors(uninterrupted))
    # The metrics continue from the checkpoint: step 5's record of the crashed run is replaced.
    assert losses(tmp_path) == losses(uninterrupted)
    straight = json.loads((find_checkpoint(uninterrupted) / "state.json").read_text())
    resumed = json.loads((find_checkpoint(tmp_path) / "state.json").read_text())
    for key in ("scheduler", "optimizer", "loader", "ema_updates", "rng"):
        assert resumed[key] == straight[key], key


def test_resume_passes_over_a_broken_checkpoint(uninterrupted, tmp_path, monkeypatch, caplog):
    with monkeypatch.context() as m:
        crash_at(m, 5)
        with pytest.raises(Crash):
            train(config(), tmp_path)
    newest = tmp_path / "checkpoints" / "step_00000004"
    shard = next(newest.glob("rank-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated on disk after the commit
    result = train(config(), tmp_path, resume="auto")
    assert "skipping broken checkpoint" in caplog.text and "step_00000004" in caplog.text
    assert result.steps == 6
    assert_identical(final_tensors(tmp_path), final_tensors(uninterrupted))


def test_async_and_sync_saves_write_the_same_bytes(uninterrupted, tmp_path):
    train(config("checkpoint.async_save=false"), tmp_path)
    for step in ("step_00000002", "step_00000006"):
        ours = tmp_path / "checkpoints" / step
        theirs = uninterrupted / "checkpoints" / step
        for name in ("rank-00000-of-00001.safetensors", "state.json"):
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), (step, name)


def test_resume_none_refuses_a_used_run_dir_and_auto_starts_fresh_without_checkpoints(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9}\n')
    with pytest.raises(ConfigError, match="--resume auto to continue"):
        train(config("train.steps=1"), tmp_path)
    # A crash before the first checkpoint: auto has nothing to resume and starts again.
    result = train(config("train.steps=1"), tmp_path, resume="auto")
    assert result.steps == 1 and losses(tmp_path).keys() == {1}


def test_retention_keeps_the_newest_and_every_mth(tmp_path):
    train(config("checkpoint.every=1", "checkpoint.keep_last=2", "checkpoint.keep_every=3"),
          tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["step_00000003", "step_00000005", "step_00000006"]


def test_init_from_takes_weights_and_starts_a_new_schedule(uninterrupted, tmp_path):
    result = train(config("train.steps=2", f"checkpoint.init_from={uninterrupted}"), tmp_path)
    reader = CheckpointReader(result.checkpoint)
    assert reader.step == 2 and reader.state["ema_updates"] == 2
    assert reader.state["optimizer"]["step"] == 2.0  # init_optimizer: false -> fresh moments
    before = CheckpointReader(find_checkpoint(uninterrupted))
    # Two steps from the initial weights stay near them; from scratch they would not.
    name = "blocks.0.attn.qkv.weight"
    moved = (reader.tensor(f"model/{name}") - before.tensor(f"model/{name}")).abs().max()
    assert 0 < moved < 0.05
