"""A disk that fills while a run trains (issue 22, case 3): every file the run writes (metrics,
TensorBoard events, samples, checkpoints) goes through the save-failed path. While the disk is
full the writes are given up with a warning and training goes on; once it has room again the
next writes succeed; when it stays full the run stops with one line, its last checkpoint valid.

The full disk is simulated where the bytes leave Python: metrics.jsonl's file object, the
TensorBoard record writer (in its writer thread), the video writer of the samples and the
checkpointer's part writer raise ENOSPC while `disk.full` is set."""

import errno
import json
import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import megagoku.train.checkpointer as checkpointer_module
import megagoku.train.metrics as metrics_module
import megagoku.train.samples as samples_module
from megagoku.cli import main
from megagoku.config import load_training_config
from megagoku.train.checkpoint import CheckpointReader, find_checkpoint
from megagoku.train.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[2]
RUN = ["train.steps=8", "train.log_every=1", "model.depth=1", "train.max_minutes=0",
       "checkpoint.every=2", "checkpoint.async_save=false", "sample.every=2", "sample.steps=1",
       "data.tokens_per_step=512"]


class Disk:
    full_from, full_until = 10 ** 9, 10 ** 9  # full for the writes of these steps

    def __init__(self):
        self.step = 0

    @property
    def full(self) -> bool:
        return self.full_from <= self.step < self.full_until

    def check(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")


class FullableFile:
    def __init__(self, handle, disk: Disk):
        self._handle, self._disk = handle, disk

    def write(self, data):
        self._disk.check()
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)


@pytest.fixture
def disk(monkeypatch):
    disk = Disk()
    original_step = Trainer.train_step

    def train_step(self, step):
        disk.step = step  # the writes after this step see the disk as it is now
        return original_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", train_step)

    def open_(file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)
        return FullableFile(handle, disk) if "metrics.jsonl" in str(file) else handle

    monkeypatch.setattr(metrics_module, "open", open_, raising=False)
    from tensorboard.summary.writer import record_writer

    original_record = record_writer.RecordWriter.write

    def write_record(self, data):
        disk.check()
        return original_record(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write_record)
    for module, name in ((samples_module, "write_video"),
                         (checkpointer_module, "write_rank_part")):
        original = getattr(module, name)

        def guarded(*args, _original=original, **kwargs):
            disk.check()
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, guarded)
    return disk


# TensorBoard's writer thread dies with the error: reported once, not printed as a traceback.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_disk_full_for_a_while_costs_its_writes_not_the_run(tmp_path, disk, caplog):
    disk.full_from, disk.full_until = 3, 5  # steps 3 and 4
    caplog.set_level(logging.WARNING)
    result = train(load_training_config(ROOT / "configs/tiny.yaml", RUN), tmp_path)
    assert result.steps == 8 and result.checkpoint.name == "step_00000008"
    # The save of step 4 failed; those of 2, 6 and 8 were committed.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["step_00000002", "step_00000006", "step_00000008"]
    CheckpointReader(find_checkpoint(tmp_path))  # valid
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text()
               .splitlines()]  # every line whole
    assert [r["step"] for r in records] == [1, 2, 5, 6, 7, 8]
    assert records[-1]["write_failures"] >= 6  # metrics, events, samples and the save
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 5, 6, 7, 8]
    assert sorted(p.name for p in (tmp_path / "train_samples").iterdir()
                  if list(p.glob("*.gif"))) == ["step_00000002", "step_00000006",
                                                "step_00000008"]
    assert "metrics.jsonl not written (OSError: [Errno 28]" in caplog.text
    assert "tensorboard not written" in caplog.text and "samples not written" in caplog.text


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_disk_that_stays_full_stops_the_run_with_one_line(tmp_path, disk, capsys):
    disk.full_from = 3
    args = ["train", "--config", "configs/tiny.yaml", "--run-dir", str(tmp_path)]
    for s in RUN:  # checkpoint.max_write_failures: 3, the default
        args += ["--set", s]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "3 writes in a row failed (last: OSError: [Errno 28]" \
        in last and "resume with --resume auto" in last, last
    # Stopped after the third failed log write (step 5), without touching what was committed.
    assert find_checkpoint(tmp_path).name == "step_00000002"
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2]
