"""The launcher's time-lost summary from the event log."""

import json

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


def test_each_node_writes_its_own_file_read_merged_in_time_order(tmp_path, monkeypatch):
    from megagoku.launch import events as event_log

    a = EventLog(event_log.node_file(tmp_path, "node-a"), launch="L2")
    b = EventLog(event_log.node_file(tmp_path, "node b/1"), launch="L2")  # a name made safe
    (tmp_path / "events.jsonl").write_text('{"time": 1, "event": "launch", "launch": "L1"}\n')
    for log, t, event in [(a, 5, "start"), (b, 3, "start"), (a, 4, "hang"), (b, 9, "end")]:
        log.log(event)
        lines = log.path.read_text().splitlines()
        record = json.loads(lines[-1])
        record["time"] = t
        log.path.write_text("\n".join(lines[:-1] + [json.dumps(record)]) + "\n")
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == ["node-a.jsonl",
                                                                        "node_b_1.jsonl"]
    merged = event_log.read_events(tmp_path)
    assert [(e["time"], e["event"]) for e in merged] == [
        (1, "launch"), (3, "start"), (4, "hang"), (5, "start"), (9, "end")]
    assert [e["event"] for e in event_log.of_launch(merged, "L2")] == ["start", "hang", "start",
                                                                      "end"]
    # A worker's events carry the launch it belongs to (from its environment).
    monkeypatch.setenv(event_log.ENV, str(a.path))
    monkeypatch.setenv(event_log.LAUNCH_ENV, "L2")
    EventLog.from_env().log("checkpoint_committed", step=4)
    assert event_log.read_events(tmp_path)[-1]["launch"] == "L2"


def test_the_summary_counts_this_launch_only(tmp_path):
    """A failure of an earlier launch on the same run dir stays in the log, not in the sum."""
    from megagoku.launch import events as event_log

    log = EventLog(tmp_path / "events" / "n.jsonl")
    for launch, event in [("old", "training_started"), ("old", "failure"),
                          ("new", "resumed"), ("new", "checkpoint_committed")]:
        log.launch = launch
        log.log(event)
    this = event_log.of_launch(event_log.read_events(tmp_path), "new")
    assert time_lost(this)["failures"] == 0
    assert time_lost(event_log.read_events(tmp_path))["failures"] == 1
