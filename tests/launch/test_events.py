"""The launcher's time-lost summary from the event log."""

from megagoku.launch.events import EventLog, time_lost


def test_time_lost_counts_redone_work_and_downtime(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for t, event in [(0, "training_started"), (10, "checkpoint_committed"), (14, "failure"),
                     (15, "failure"),  # the first restart failed too
                     (20, "resumed"), (30, "checkpoint_committed"), (33, "hang"),
                     (40, "resumed")]:
        log.log(event)
    events = log.read()
    for e, t in zip(events, [0, 10, 14, 15, 20, 30, 33, 40]):
        e["time"] = t
    summary = time_lost(events)
    # Redone: 14-10 and 33-30; down: 20-14 and 40-33; three failures, the second one extending
    # the first one's downtime.
    assert summary == {"failures": 3, "redone_s": 7.0, "downtime_s": 13.0, "lost_s": 20.0}


def test_a_torn_last_line_is_skipped(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.log("start", attempt=1)
    with open(log.path, "a") as f:
        f.write('{"time": 1, "event": "fail')
    assert [e["event"] for e in log.read()] == ["start"]
