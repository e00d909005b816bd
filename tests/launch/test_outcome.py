"""A launch's exit code follows from what is on disk (`launch/outcome.py`)."""

from pathlib import Path

from megagoku.launch.outcome import decide, newest_committed, what_was_lost


def checkpoint(run_dir: Path, step: int, committed: bool = True) -> str:
    path = run_dir / "checkpoints" / f"step_{step:08d}"
    path.mkdir(parents=True)
    if committed:
        (path / "manifest.json").write_text("{}")
    return str(path)


def facts(**kw):
    base = dict(succeeded=False, failure=None, stop_signal=None, stop_time=None, trains=True,
                last_step=None)
    return {**base, **kw}


def test_success_needs_the_final_checkpoint_committed(tmp_path):
    final = checkpoint(tmp_path, 8)
    events = [{"time": 5, "event": "finished", "step": 8, "steps": 8, "stop_reason": "done",
               "checkpoint": final}]
    end = decide(tmp_path, events, **facts(succeeded=True, last_step=8))
    assert (end.outcome, end.exit_code, end.step) == ("succeeded", 0, 8)
    assert end.reason == "trained to step 8 of 8; final checkpoint step_00000008 committed"
    # The same exits with the checkpoint's commit missing on disk: a failure, not a success.
    (Path(final) / "manifest.json").unlink()
    end = decide(tmp_path, events, **facts(succeeded=True, last_step=8))
    assert (end.outcome, end.exit_code) == ("failed", 1)
    assert "is not committed on disk" in end.reason
    # Workers that exit 0 without reporting a final checkpoint did not finish a training run.
    end = decide(tmp_path, [], **facts(succeeded=True))
    assert end.exit_code == 1 and "reported no final checkpoint" in end.reason
    # An attempt that failed before the one that finished does not make the launch fail.
    (Path(final) / "manifest.json").write_text("{}")
    end = decide(tmp_path, events, **facts(succeeded=True, failure="rank 1 exited with -9"))
    assert end.outcome == "succeeded"
    # A command that does not train has no checkpoint to show.
    assert decide(tmp_path, [], **facts(succeeded=True, trains=False)).exit_code == 0


def test_a_hang_or_crash_is_a_failure_that_says_what_was_lost(tmp_path):
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 20, committed=False)  # half-written: never counted
    end = decide(tmp_path, [], **facts(failure="hang: rank 1: nothing advanced", last_step=23))
    assert (end.outcome, end.exit_code, end.step) == ("failed", 1, 10)
    assert end.reason == ("hang: rank 1: nothing advanced; steps 11-23 are lost; the run "
                          "continues from step_00000010")


def test_requeue_only_with_a_checkpoint_of_this_launch_committed_after_the_stop(tmp_path):
    early = checkpoint(tmp_path, 10)
    events = [{"time": 50, "event": "checkpoint_committed", "step": 10, "path": early}]
    # SIGTERM at t=60, during a restart: nothing committed after it.
    end = decide(tmp_path, events, **facts(stop_signal="SIGTERM", stop_time=60, last_step=14))
    assert (end.outcome, end.exit_code) == ("stopped", 1)
    assert end.reason == ("stopped by SIGTERM before a checkpoint of this launch was committed: "
                          "steps 11-14 are lost; the run continues from step_00000010")
    # The workers saved after the signal: requeue, and the checkpoint is named.
    late = checkpoint(tmp_path, 15)
    events.append({"time": 70, "event": "checkpoint_committed", "step": 15, "path": late})
    end = decide(tmp_path, events, **facts(stop_signal="SIGUSR1", stop_time=60, last_step=15))
    assert (end.outcome, end.exit_code, end.checkpoint) == ("requeue", 75, late)
    # ... but not when its commit is not on disk.
    (Path(late) / "manifest.json").unlink()
    end = decide(tmp_path, events, **facts(stop_signal="SIGUSR1", stop_time=60, last_step=15))
    assert end.exit_code == 1


def test_what_was_lost(tmp_path):
    assert what_was_lost(tmp_path, None) == "no training step finished in this launch"
    assert what_was_lost(tmp_path, 3) == "steps 1-3 are lost: no checkpoint is committed"
    checkpoint(tmp_path, 4)
    assert newest_committed(tmp_path)[0] == 4
    assert what_was_lost(tmp_path, 4) == ("nothing trained is lost; the run continues from "
                                          "step_00000004")
