"""Every long phase of a worker reports progress through `launch.heartbeat` (what makes a slow
phase slow and not hung under `megagoku launch`): each sampling step and decoded video, each step
and batch of the evaluation classifier, each tensor snapshotted, saved (and checksummed) and
loaded, each sample the loader reads. The end-to-end check (a sampling and evaluation pass longer
than the heartbeat timeout, on 2 ranks) is in test_launcher.py."""

from collections import Counter

import pytest
import torch

from megagoku.config.schema import DataConfig
from megagoku.data import PackingLoader, ShapesDataset
from megagoku.evaluation.classifier import ClassifierSpec, train_classifier
from megagoku.launch import heartbeat
from megagoku.train.checkpoint import CheckpointReader, commit, write_rank_part
from megagoku.train.checkpointer import Checkpointer
from tests.inference.test_generate import make_generator


@pytest.fixture
def calls(monkeypatch) -> Counter:
    seen = Counter()
    monkeypatch.setattr(heartbeat, "progress", lambda what="", step=None: seen.update([what]))
    return seen


def test_each_sampling_step_and_decoded_video_reports(calls):
    gen = make_generator()
    gen.generate(["a red square moving up", "a blue circle"], 4, 8, 8, steps=5, cfg_scale=4.0,
                 seed=0)
    assert calls["sample"] == 5 and calls["decode"] == 2


def test_each_classifier_step_render_and_batch_reports(calls):
    spec = ClassifierSpec(frames=4, height=8, width=8, steps=3, train_videos=8, train_images=4,
                          batch=4)
    train_classifier(spec, say=lambda s: None)
    assert calls["classifier"] == 3
    assert calls["render"] == 8 + 4 + 512 + 512  # train pools, then the held-out renders
    assert calls["classify"] >= 2


def test_each_tensor_saved_and_loaded_reports(calls, tmp_path):
    tensors = {f"model/w{i}": torch.randn(3) for i in range(4)}
    host = Checkpointer(tmp_path, 0, 1)
    snapshot = {k: host.to_host(k, v) for k, v in tensors.items()}
    assert calls["snapshot"] == 4
    write_rank_part(tmp_path / ".tmp_step_00000001", 0, 1, snapshot, rng={})
    assert calls["save"] == 1
    reader = CheckpointReader(commit(tmp_path, 1, 1, config={}, state={}))  # verified: hashed
    assert calls["checksum"] >= 1
    loads = calls["load"]
    for key in tensors:
        assert reader.tensor(key).equal(tensors[key])
    assert calls["load"] - loads == 4


def test_each_sample_read_reports(calls):
    data = DataConfig(height=8, width=8, frames=4, seed=0)
    loader = PackingLoader(ShapesDataset(data), lambda v: v, (1, 2, 2), 4096)
    loader.next_pack()
    assert calls["data"] == loader.next_index >= 2
