"""Saving and resuming over 2 gloo ranks: markers reach rank 0 through the process group's store
(no marker files, no polling), a rank whose write fails stops the commit at once, and a resume
verifies each rank's share of the files, every rank agreeing on the checkpoint chosen."""

import json
import sys

import pytest

from tests.distributed.launch import ROOT, run_ranks


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    outputs = run_ranks(2, [str(ROOT / "tests/train/checkpoint_ranks_worker.py"), str(run_dir)],
                        timeout=240)
    found = []
    for out in outputs:
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert lines, out[-3000:]
        found.append(json.loads(lines[0][len("RESULT "):]))
    return run_dir, sorted(found, key=lambda r: r["rank"]), outputs


def test_markers_travel_through_the_store(results):
    run_dir, (zero, one), _ = results
    assert zero["saved_3"].endswith("checkpoints/step_00000003") and one["saved_3"] == "None"
    assert zero["marker_files"] == [] and one["marker_files"] == []


def test_a_failed_rank_stops_the_commit_at_once(results):
    run_dir, (zero, one), _ = results
    assert one["failed_5"] is not None and "No space left on device" in one["failed_5"]
    assert "rank 1: checkpoint of step 5 not saved" in zero["failed_5"]
    assert zero["failed_5"].endswith("not committed")
    assert zero["failure_seen_s"] < 30  # the commit timeout is 120 s
    assert not (run_dir / "checkpoints" / "step_00000005").exists()


def test_resume_verification_is_shared_and_agreed(results):
    run_dir, (zero, one), outputs = results
    assert zero["resumed_from"] == one["resumed_from"] == \
        str(run_dir / "checkpoints" / "step_00000001")
    # Each rank hashed the metadata and its own tensor files only (two checkpoints tried).
    assert sorted(n for n in zero["hashed"] if n.endswith(".safetensors")) == \
        ["rank-00000-of-00002.safetensors"] * 2
    assert sorted(n for n in one["hashed"] if n.endswith(".safetensors")) == \
        ["rank-00001-of-00002.safetensors"] * 2
    assert "step_00000003/rank-00001-of-00002.safetensors: checksum differs" in outputs[0]
