"""torch's elastic agent (the process manager of torchrun: spawn, rendezvous, monitor, tear down,
restart the worker group) with MegaScale's additions, as a subclass of `LocalElasticAgent`:

- hang detection: a healthy-looking group whose rank stopped beating (`heartbeat.py`) is marked
  unhealthy, killed with SIGKILL (a hung rank does not answer SIGTERM) and restarted;
- restarts from the newest valid checkpoint (the workers run with `--resume auto`), up to
  `max_restarts`, after an exponential backoff (a flapping node does not spin);
- stop signals: SIGUSR1 or SIGTERM to the launcher (Slurm preemption) are forwarded to the
  workers, which checkpoint and exit with `exit_codes.REQUEUE`; then nothing is restarted and
  the launcher exits with that code too, asking to be requeued;
- loss-anomaly rollbacks: ranks that exit with `exit_codes.ROLLBACK` are restarted from the
  checkpoint at once, without spending a restart;
- the event log (`events.py`).

Crash and hang restarts kill the surviving workers at once (SIGKILL): they cannot save anything
useful without their peers, and waiting for them only adds to the time lost.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Optional

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

from megagoku.launch.exit_codes import REQUEUE, ROLLBACK
from megagoku.launch.events import EventLog
from megagoku.launch.heartbeat import HeartbeatMonitor

log = logging.getLogger(__name__)


class SupervisingAgent(LocalElasticAgent):
    def __init__(self, *args, heartbeats: HeartbeatMonitor, events: EventLog,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 stop_timeout_s: float = 300.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.heartbeats = heartbeats
        self.events = events
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.stop_timeout_s = stop_timeout_s
        self.stop_requested: Optional[str] = None  # the signal's name
        self.requeue = False
        self.attempt = 0
        self.last_failure: Optional[str] = None
        self._kill_on_stop = False
        self._rollback = False

    # -- stop signals --------------------------------------------------------------------------
    def request_stop(self, signum: int, frame=None) -> None:
        """Forward a stop signal to the workers; they checkpoint and exit with REQUEUE."""
        name = signal.Signals(signum).name
        self.stop_requested = name
        pids = list(self._pcontext.pids().values()) if self._pcontext else []
        self.events.log("stop_requested", signal=name, pids=pids)
        log.warning("%s: asking the workers (%s) to checkpoint and stop", name, pids)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # -- the agent's hooks ---------------------------------------------------------------------
    def _start_workers(self, worker_group: WorkerGroup):
        self.attempt += 1
        self.heartbeats.reset(w.global_rank for w in worker_group.workers)
        pids = super()._start_workers(worker_group)
        self.events.log("start", attempt=self.attempt,
                        ranks=[w.global_rank for w in worker_group.workers],
                        pids=sorted(pids.values()) if isinstance(pids, dict) else None)
        return pids

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        result = super()._monitor_workers(worker_group)
        if result.state == WorkerState.FAILED:
            codes = {rank: failure.exitcode for rank, failure in result.failures.items()}
            if self.stop_requested or (codes and all(c == REQUEUE for c in codes.values())):
                # A requested stop, not a fault: the checkpoint is committed, do not restart.
                self.requeue = True
                self._remaining_restarts = 0
                self.events.log("stopped", attempt=self.attempt, exit_codes=codes)
            elif ROLLBACK in codes.values() and \
                    all(c in (ROLLBACK, -signal.SIGTERM) for c in codes.values()):
                # The ranks stopped together on a loss anomaly (those still exiting got SIGTERM):
                # restart from the checkpoint at once, without spending a restart on it. The
                # trainer bounds this (train.max_anomalies).
                self._remaining_restarts += 1
                self._rollback = True
                self.events.log("rollback", attempt=self.attempt, exit_codes=codes)
                log.warning("attempt %d rolls back to the newest valid checkpoint", self.attempt)
            else:
                self._kill_on_stop = True
                self.last_failure = ", ".join(f"rank {r} exited with {c}"
                                              for r, c in sorted(codes.items()))
                self.events.log("failure", attempt=self.attempt, exit_codes=codes)
                log.error("attempt %d failed: %s", self.attempt, self.last_failure)
        elif result.state == WorkerState.HEALTHY and not self.stop_requested:
            quiet = self.heartbeats.quiet(w.global_rank for w in worker_group.workers)
            if quiet:
                self._kill_on_stop = True
                self.last_failure = "; ".join(f"rank {r}: {why}" for r, why in quiet.items())
                self.events.log("hang", attempt=self.attempt,
                                ranks={str(r): why for r, why in quiet.items()})
                log.error("attempt %d hangs: %s", self.attempt, self.last_failure)
                return RunResult(state=WorkerState.UNHEALTHY)
        elif result.state == WorkerState.SUCCEEDED:
            self.events.log("succeeded", attempt=self.attempt)
        return result

    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        restarts = self.attempt  # restarts done so far + 1
        delay = 0.0 if self._rollback else min(self.backoff_s * 2 ** (restarts - 1),
                                               self.max_backoff_s)
        self._rollback = False
        self.events.log("restart", attempt=self.attempt + 1, backoff_s=delay,
                        remaining=self._remaining_restarts)
        log.warning("restarting the workers in %.1f s from the newest valid checkpoint "
                    "(%d restarts left)", delay, self._remaining_restarts)
        # The base class's restart (stop, then rendezvous and start), with the backoff between:
        # the survivors must not run during it.
        self._stop_workers(worker_group)
        worker_group.state = WorkerState.STOPPED
        time.sleep(delay)
        self._initialize_workers(worker_group)

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        if self._kill_on_stop:  # after a crash or hang: nothing left to save
            death_sig, self._kill_on_stop = signal.SIGKILL, False
        elif self.stop_requested:  # give the workers the time to checkpoint
            timeout = max(timeout, int(self.stop_timeout_s))
        super()._shutdown(death_sig, timeout)
