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


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_saves_with_data_workers_running(tmp_path):
    # A terminal's Ctrl-C is SIGINT to the whole process group: the data workers get it too. The
    # run must still save at the end of the step and exit 75 (issue 22 case 2), not die on "a
    # data worker died".
    import os
    import signal
    import subprocess
    import sys

    from tests.train.test_interrupt import LONG, finish, wait_for_step

    base = load_training_config(ROOT / "configs/tiny.yaml")
    manifest = write_shapes_files(tmp_path / "data", base.data, 12)
    args = [sys.executable, "-m", "megagoku.cli", "train", "--config", "configs/tiny.yaml",
            "--run-dir", str(tmp_path / "run")]
    for s in LONG + ["data.kind=manifest", f"data.manifest={manifest}", "data.num_workers=2"]:
        args += ["--set", s]
    owner = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,  # its own group, as a shell's job
                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    try:
        wait_for_step(owner, 2)
        os.killpg(owner.pid, signal.SIGINT)
        code, out, err = finish(owner)
    finally:
        owner.kill()
    assert code == 75, err[-3000:]
    assert "Traceback" not in err and "data worker died" not in err
    saved = find_checkpoint(tmp_path / "run")
    assert f"checkpoint: {saved}" in out
