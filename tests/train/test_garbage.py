import gc
import json

import pytest

from megagoku.config import ConfigError, load_training_config
from megagoku.train.components.garbage import GarbageCollection
from megagoku.train.trainer import train
from tests.distributed.launch import ROOT


@pytest.fixture
def collections():
    """The generations collected while the test runs, in order."""
    seen = []

    def record(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)


def test_a_run_collects_only_the_young_generations_when_due_then_gives_the_collector_back(
        collections):
    garbage = GarbageCollection(every=3)
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0  # what existed: never walked
        for step in (1, 2):
            garbage.step(step)
        assert collections == []
        garbage.step(3)
        assert collections == [GarbageCollection.YOUNG]
    finally:
        garbage.close()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    garbage.close()  # a second close changes nothing
    assert gc.isenabled()


def test_zero_leaves_pythons_collector_alone(collections):
    garbage = GarbageCollection(every=0)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    garbage.step(50)
    garbage.close()
    assert gc.isenabled() and collections == []


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        GarbageCollection(every=2).close()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_what_the_caller_froze_stays_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        GarbageCollection(every=2).close()
        assert gc.isenabled() and gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_a_training_run_collects_at_its_steps_and_ends_with_the_collector_as_it_found_it(
        tmp_path, collections):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "train.steps=4", "train.gc_every=2", "train.log_every=1", "sample.every=0",
        "checkpoint.every=0"])
    train(cfg, tmp_path / "run")
    assert collections.count(2) == 0, "the run walked the oldest generation"
    assert collections.count(GarbageCollection.YOUNG) == 2  # after steps 2 and 4
    assert gc.isenabled() and gc.get_freeze_count() == 0
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4


def test_a_negative_interval_is_a_config_error():
    with pytest.raises(ConfigError, match="train.gc_every: must be >= 0"):
        load_training_config(ROOT / "configs/tiny.yaml", ["train.gc_every=-1"])
