"""torch's elastic agent (the process manager of torchrun: spawn, rendezvous, monitor, tear down,
restart the worker group) with MegaScale's additions, as a subclass of `LocalElasticAgent`:

- hang detection by progress (`heartbeat.py`): the group is hung when nothing advanced in any of
  its ranks (on any node) for the timeout, whatever phase they are in (training, evaluation,
  sampling, a save); then every rank is killed and the hang event names the phase each last
  reported;
- restarts from the newest valid checkpoint (the workers run with `--resume auto`), up to
  `max_restarts`, after an exponential backoff (a flapping node does not spin); never after a
  config error (exit 2) or after the same failure twice before any training step (a
  deterministic start-up error): those fail at once, saying so;
- stop signals: SIGUSR1, SIGTERM or SIGINT to the launcher (Slurm preemption, Ctrl-C) are
  forwarded to the workers, which checkpoint and exit with `exit_codes.REQUEUE`; nothing is
  restarted afterwards. A second SIGINT kills the workers at once;
- loss-anomaly rollbacks: ranks that exit with `exit_codes.ROLLBACK` are restarted from the
  checkpoint at once, without spending a restart;
- the event log (`events.py`).

The agent watches its worker processes itself instead of through torch's `PContext.wait`, which
on the first failed rank sends SIGTERM to the others and gives them 30 s: survivors would start
their own stop-signal save and wait in its commit for the dead rank. Here a rank that dies
(any exit but 0, 75, 76) gets its peers SIGKILLed at once: without every peer no save can
commit, and waiting only adds to the time lost. Ranks that exit 0, 75 or 76 are let finish
(the others are still saving or exiting), watched by their heartbeats. torch's error line
(`failed (exitcode: 75)`) is not printed for a graceful stop.

Whether the launch succeeded is not decided here but from what is on disk (`outcome.py`)."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Optional

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from megagoku.launch.events import EventLog
from megagoku.launch.exit_codes import CONFIG_ERROR, REQUEUE, ROLLBACK
from megagoku.launch.heartbeat import HeartbeatMonitor

log = logging.getLogger(__name__)
CLEAN = (0, REQUEUE, ROLLBACK)  # exits that are not failures
PROGRESS_KEY = "megagoku/progress"  # in each rendezvous round's store: a node-progress counter
EXCHANGE_S = 2.0


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
        self.stop_time: Optional[float] = None  # wall time it came
        self.workers_stopped = False  # every rank exited with REQUEUE (a signal sent to them)
        self.attempt = 0
        self.attempt_started: Optional[float] = None  # wall time
        self.failure: Optional[str] = None  # why the launch failed, if it did
        self.group_rank: Optional[int] = None
        self._killed: set[int] = set()  # ranks of this attempt that the agent killed
        self._startup_failure: Optional[tuple] = None  # the last attempt's, before any step
        self._rollback = False
        self._not_restarted = False
        # Progress of the other nodes (_progress_elsewhere).
        self._exchanged_at = float("-inf")
        self._published: Optional[float] = None
        self._count: Optional[int] = None
        self._elsewhere: Optional[float] = None

    # -- stop signals --------------------------------------------------------------------------
    def request_stop(self, signum: int, frame=None) -> None:
        """Forward a stop signal to the workers; they checkpoint and exit with REQUEUE. SIGINT
        is forwarded as SIGTERM (the workers save on both); a second SIGINT kills them."""
        name = signal.Signals(signum).name
        if self.stop_requested and signum == signal.SIGINT:
            self.events.log("stop_forced", signal=name)
            log.warning("%s again: killing the workers without a save", name)
            self._kill(self._running())
            return
        if self.stop_requested:
            return  # the workers are saving already
        self.stop_requested, self.stop_time = name, time.time()
        pids = self._pids()
        self.events.log("stop_requested", signal=name, pids=sorted(pids.values()))
        log.warning("%s: asking the workers (%s) to checkpoint and stop", name,
                    sorted(pids.values()))
        self._forward_stop(pids.values())

    def _forward_stop(self, pids) -> None:
        sig = signal.SIGTERM if self.stop_requested == "SIGINT" else \
            signal.Signals[self.stop_requested]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # -- the worker processes ------------------------------------------------------------------
    def _handlers(self, worker_group: Optional[WorkerGroup] = None) -> dict:
        """global rank -> torch's SubprocessHandler (the workers run a binary: Popen)."""
        pc = self._pcontext
        handlers = getattr(pc, "subprocess_handlers", None) or {}
        workers = (worker_group or self._worker_group).workers
        return {workers[lr].global_rank: h for lr, h in handlers.items()}

    def _pids(self) -> dict[int, int]:
        return {r: h.proc.pid for r, h in self._handlers().items()}

    def _running(self) -> list[int]:
        return [r for r, h in self._handlers().items() if h.proc.poll() is None]

    def _kill(self, ranks) -> None:
        handlers = self._handlers()
        for rank in ranks:
            self._killed.add(rank)
            try:  # the worker's process group: it and anything it started
                os.killpg(handlers[rank].proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _failures(self, codes: dict[int, int]) -> dict[int, ProcessFailure]:
        pc, out = self._pcontext, {}
        local = {w.global_rank: w.local_rank for w in self._worker_group.workers}
        for rank, code in codes.items():
            out[rank] = ProcessFailure(local_rank=local[rank], pid=self._pids()[rank],
                                       exitcode=code, error_file=pc.error_files[local[rank]])
        return out

    # -- the agent's hooks ---------------------------------------------------------------------
    def _start_workers(self, worker_group: WorkerGroup):
        self.attempt += 1
        self.attempt_started = time.time()
        self._killed = set()
        self.group_rank = worker_group.group_rank
        self.heartbeats.reset(w.global_rank for w in worker_group.workers)
        self._exchanged_at, self._published, self._count = float("-inf"), None, None
        self._elsewhere = None
        pids = super()._start_workers(worker_group)
        self.events.log("start", attempt=self.attempt,
                        pids={str(r): p for r, p in sorted(self._pids().items())})
        if self.stop_requested:  # the signal came during the rendezvous
            self._forward_stop(self._pids().values())
        return pids

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        if self._not_restarted:  # a stop signal came during the restart's backoff
            self._remaining_restarts = 0
            self.events.log("stopped", attempt=self.attempt, exit_codes={})
            return RunResult(state=WorkerState.FAILED)
        handlers = self._handlers(worker_group)
        codes = {r: h.proc.poll() for r, h in handlers.items()}
        running = [r for r, c in codes.items() if c is None]
        exited = {r: c for r, c in codes.items() if c is not None and r not in self._killed}
        crashed = {r: c for r, c in exited.items() if c not in CLEAN}

        if crashed:
            return self._on_crash(worker_group, running, exited, crashed)
        if running:
            return self._watch(worker_group, running)
        # Every rank has exited cleanly (or was stopped before it started).
        if exited and all(c == 0 for c in exited.values()) and not self._killed:
            self.events.log("succeeded", attempt=self.attempt)
            return RunResult(state=WorkerState.SUCCEEDED,
                             return_values=dict.fromkeys(exited))
        if self.stop_requested or (exited and all(c == REQUEUE for c in exited.values())):
            # A requested stop, not a fault: whether a checkpoint made it is for outcome.py.
            self.workers_stopped = not self.stop_requested
            self._remaining_restarts = 0
            self.events.log("stopped", attempt=self.attempt,
                            exit_codes={str(r): c for r, c in exited.items()})
            return RunResult(state=WorkerState.FAILED, failures=self._failures(exited))
        if ROLLBACK in exited.values():
            # The ranks stopped together on a loss anomaly: restart from the checkpoint at once,
            # without spending a restart on it. The trainer bounds this (train.max_anomalies).
            self._remaining_restarts += 1
            self._rollback = True
            self.events.log("rollback", attempt=self.attempt,
                            exit_codes={str(r): c for r, c in exited.items()})
            log.warning("attempt %d rolls back to the newest valid checkpoint", self.attempt)
            return RunResult(state=WorkerState.FAILED, failures=self._failures(exited))
        # Some ranks exited 0 and others 75 with no signal: not a state training ends in.
        return self._on_crash(worker_group, [], exited, exited)

    def _on_crash(self, worker_group, running, exited, crashed) -> RunResult:
        self._kill(running)  # at once: no save can commit without the dead peer
        codes = {str(r): c for r, c in sorted(exited.items())}
        why = ", ".join(f"rank {r} exited with {c}" for r, c in sorted(crashed.items()))
        final = None
        if self.stop_requested:
            final = "after the stop signal"
        elif CONFIG_ERROR in crashed.values():
            final = f"exit {CONFIG_ERROR} is a config or checkpoint error: it cannot succeed " \
                    "on a retry"
        else:
            trained = self.heartbeats.trained(w.global_rank for w in worker_group.workers)
            signature = tuple(sorted(set(crashed.values())))
            if not trained and signature == self._startup_failure:
                final = "the same failure as the attempt before, both before the first " \
                        "training step: a deterministic start-up error, not retried"
            self._startup_failure = None if trained else signature
        if final is not None:
            self._remaining_restarts = 0
            why += f" ({final})"
        self.failure = why
        self.events.log("failure", attempt=self.attempt, exit_codes=codes,
                        killed=sorted(running), final=final is not None, why=why)
        log.error("attempt %d failed: %s", self.attempt, why)
        return RunResult(state=WorkerState.FAILED, failures=self._failures(exited))

    def _watch(self, worker_group, running) -> RunResult:
        if self.stop_requested and time.time() - self.stop_time > self.stop_timeout_s:
            self._kill(running)
            self._remaining_restarts = 0
            self.failure = (f"the workers did not stop within --stop-timeout "
                            f"{self.stop_timeout_s:g} s of {self.stop_requested}")
            self.events.log("failure", attempt=self.attempt, killed=sorted(running),
                            final=True, why=self.failure)
            return RunResult(state=WorkerState.UNHEALTHY)
        hung = self.heartbeats.hung(running, elsewhere=self._progress_elsewhere(worker_group))
        if not hung:
            return RunResult(state=WorkerState.HEALTHY)
        self._kill(running)  # a hung rank does not answer SIGTERM
        if self.stop_requested:
            self._remaining_restarts = 0
        self.failure = "hang: " + "; ".join(f"rank {r}: {why}" for r, why in sorted(hung.items()))
        self.events.log("hang", attempt=self.attempt,
                        ranks={str(r): why for r, why in sorted(hung.items())})
        log.error("attempt %d hangs: %s", self.attempt, self.failure)
        return RunResult(state=WorkerState.UNHEALTHY)

    def _progress_elsewhere(self, worker_group: WorkerGroup) -> Optional[float]:
        """Several nodes: the monotonic time another node last reported progress, through a
        counter in this round's rendezvous store (each launcher adds 1 when its own ranks
        advanced, at most every `EXCHANGE_S`; two store calls per node and period, whatever the
        number of nodes). None on one node."""
        if (worker_group.group_world_size or 1) <= 1 or worker_group.store is None:
            return None
        now = time.monotonic()
        if now - self._exchanged_at < EXCHANGE_S:
            return self._elsewhere
        self._exchanged_at = now
        try:
            latest = self.heartbeats.latest(w.global_rank for w in worker_group.workers)
            if latest is not None and latest != self._published:
                self._published = latest
                worker_group.store.add(PROGRESS_KEY, 1)
            count = worker_group.store.add(PROGRESS_KEY, 0)
        except Exception:  # noqa: BLE001 - the store host is gone: the local view decides
            return self._elsewhere
        if count != self._count:
            self._count, self._elsewhere = count, now
        return self._elsewhere

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
        # the survivors must not run during it. A stop signal during it ends the launch.
        self._stop_workers(worker_group)
        worker_group.state = WorkerState.STOPPED
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stop_requested:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        if self.stop_requested:
            self._not_restarted = True  # _monitor_workers ends the launch
            return
        self._initialize_workers(worker_group)

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        # Whatever still runs when the agent tears down cannot save anything useful any more
        # (its peers are gone, or the launcher is ending): SIGKILL, never a lone save attempt.
        super()._shutdown(signal.SIGKILL, timeout)
