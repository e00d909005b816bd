"""Training with data workers (issue 24): a run that reads its samples in 2 worker processes,
crashes and resumes ends bit-identical to an uninterrupted run that read them in the training
process; the workers' decode counts reach the metrics."""

import json
from pathlib import Path

import pytest

from megagoku.config import load_training_config
from megagoku.data.shapes_files import write_shapes_files
from megagoku.train.checkpoint import find_checkpoint
from megagoku.train.trainer import train
from tests.train.test_resume import RUN, Crash, assert_identical, crash_at, final_tensors

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_resumed_run_with_workers_equals_an_uninterrupted_one_without(tmp_path, monkeypatch):
    base = load_training_config(ROOT / "configs/tiny.yaml")
    manifest = write_shapes_files(tmp_path / "data", base.data, 12)

    def config(workers):
        return load_training_config(ROOT / "configs/tiny.yaml", RUN + [
            "data.kind=manifest", f"data.manifest={manifest}", f"data.num_workers={workers}",
            "data.read_batch=3"])

    train(config(0), tmp_path / "inline")
    with monkeypatch.context() as m:
        crash_at(m, 5)
        with pytest.raises(Crash):
            train(config(2), tmp_path / "workers")
    result = train(config(2), tmp_path / "workers", resume="auto")
    assert result.steps == 6
    assert_identical(final_tensors(tmp_path / "workers"), final_tensors(tmp_path / "inline"))
    records = [json.loads(line) for line in
               (tmp_path / "workers" / "metrics.jsonl").read_text().splitlines()]
    inline = [json.loads(line) for line in
              (tmp_path / "inline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == [r["loss"] for r in inline]
    assert records[-1]["data/decoded_dali"] > 0 and records[-1]["data/decoded_pyav"] > 0
    straight, resumed = (json.loads((find_checkpoint(tmp_path / name) / "state.json").read_text())
                         for name in ("inline", "workers"))
    for key in ("scheduler", "optimizer", "loader", "ema_updates", "rng"):
        assert resumed[key] == straight[key], key
