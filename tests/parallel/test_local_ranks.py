"""Local ranks started as torchrun starts them (`parallel.local_ranks`, used by `bench memory`
and the multi-process tests): each sees its own launcher variables, the outputs come back in
rank order, and a failing or hung rank is named rather than waited on for the process group's
timeout."""

import time

import pytest

from megagoku.parallel.local_ranks import RankFailed, run_ranks

SHOW = "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK'], " \
       "os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'], os.environ['OMP_NUM_THREADS'], " \
       "os.environ.get('EXTRA'))"


def test_each_rank_gets_torchrun_variables_and_the_outputs_come_back_in_rank_order(monkeypatch):
    monkeypatch.setenv("RANK", "7")  # a launcher's variables of this process are not passed on
    outputs = run_ranks(3, ["-c", SHOW], timeout=60, extra_env={"EXTRA": "x"})
    fields = [out.split() for out in outputs]
    assert [f[:3] for f in fields] == [["0", "3", "0"], ["1", "3", "1"], ["2", "3", "2"]]
    assert {f[3] for f in fields} == {"127.0.0.1"} and len({f[4] for f in fields}) == 1
    assert {(f[5], f[6]) for f in fields} == {("1", "x")}


def test_another_launchers_variables_instead():
    outputs = run_ranks(2, ["-c", "import os; print(os.environ.get('RANK'), "
                                  "os.environ['SLURM_PROCID'])"], timeout=60,
                        rank_env=lambda rank, port: {"SLURM_PROCID": str(rank)})
    assert [out.split() for out in outputs] == [["None", "0"], ["None", "1"]]


def test_the_rank_that_fails_is_named_and_the_waiting_ones_are_ended():
    code = ("import os, sys, time\n"
            "if os.environ['RANK'] == '1': print('rank one broke'); sys.exit(3)\n"
            "time.sleep(600)  # as in a collective, waiting for rank 1")
    start = time.monotonic()
    with pytest.raises(RankFailed, match=r"(?s)rank 1 of 2 .* exited 3:\nrank one broke"):
        run_ranks(2, ["-c", code], timeout=300, grace=1)
    assert time.monotonic() - start < 60  # not the timeout


def test_a_hung_rank_is_named_at_the_timeout():
    code = "import os, time\nprint('started', flush=True)\n" \
           "time.sleep(600 if os.environ['RANK'] == '1' else 0)"
    with pytest.raises(RankFailed, match=r"(?s)rank 1 of 2 .* still running after 2 s.*started"):
        run_ranks(2, ["-c", code], timeout=2)
