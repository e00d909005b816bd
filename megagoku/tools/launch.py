"""`megagoku launch [options] -- train --config FILE [--set ...]`: run a training command on
every rank of this node through torch's elastic agent, fault-tolerantly (`megagoku/launch/`).

The workers run `python -m megagoku <command> --run-dir RUN_DIR --resume auto`, so the first
attempt starts the run and every restart continues it from the newest valid checkpoint. Events go
to RUN_DIR/events/<node>.jsonl (one file per node, read merged), and at the end
RUN_DIR/launch_summary.json says how this launch ended and why, how many failures it had and how
much time they cost (this launch only: earlier launches stay in the event log).

Liveness is progress: the workers report every unit of work (training steps, eval batches,
sampling steps, tensors saved and loaded, samples read) through a node-local channel (/dev/shm);
the group is hung when nothing advanced in any rank for --heartbeat-timeout (before a rank's
first step: --startup-timeout), and the hang names the phase each rank last reported. A rank
that dies gets its peers killed at once; the group restarts (--max-restarts, with backoff)
unless the error is final: a config error (exit 2), or the same failure twice before the first
training step.

Exit codes, from what is on disk: 0 when the workers finished and the final checkpoint is
committed; 75 (exit_codes.REQUEUE) after SIGUSR1/SIGTERM/SIGINT once a checkpoint of this launch
was committed after the signal: run it again (a Slurm requeue) and it continues; 1 otherwise (a
crash, a hang, restarts used up, a final error, or a stop before any checkpoint: the message says
what was lost).

Several nodes: start the same command on each with --nnodes N and one --rdzv-endpoint (host:port
of node 0), e.g. from an sbatch script (`launchers/`). The stores listen on 127.0.0.1 for one
node and on the master address only for several; torch's TCPStore has no authentication, so the
rendezvous port must be reachable only from inside the cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("launch", help="fault-tolerant launch of a training command "
                              "(elastic agent + heartbeats + restarts from checkpoints)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc-per-node", type=int, default=1, help="workers on this node")
    p.add_argument("--nnodes", type=int, default=1, help="nodes taking part (default 1)")
    p.add_argument("--rdzv-endpoint", help="host:port of the rendezvous (several nodes: the "
                                           "first node; one node: 127.0.0.1 and a free port)")
    p.add_argument("--rdzv-id", default=None, help="job id shared by the nodes (default: "
                                                    "SLURM_JOB_ID, else a random one)")
    p.add_argument("--run-dir", required=True, help="the run's directory (checkpoints, metrics, "
                                                    "events); passed to the command")
    p.add_argument("--max-restarts", type=int, default=3, help="restarts after a crash or hang")
    p.add_argument("--heartbeat-timeout", type=float, default=300.0,
                   help="seconds in which nothing advances (no step, eval batch, sampling step, "
                        "tensor saved or loaded, sample read) before a rank counts as hung")
    p.add_argument("--startup-timeout", type=float, default=900.0,
                   help="the same before a rank's first training step of an attempt")
    p.add_argument("--backoff", type=float, default=5.0,
                   help="seconds before the first restart, doubled each time (max 60)")
    p.add_argument("--stop-timeout", type=float, default=300.0,
                   help="seconds the workers get to checkpoint after SIGUSR1/SIGTERM/SIGINT")
    p.add_argument("--monitor-interval", type=float, default=0.5)
    p.add_argument("--failed-nodes", type=int, metavar="N",
                   help="launch nothing: print the nodes with at least N failures or hangs in "
                        "the run's event log, comma-separated (for a requeue that excludes them)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- then the megagoku command, e.g. -- train --config configs/tiny.yaml")
    p.set_defaults(func=run)


def worker_args(command: list[str], run_dir: Path) -> list[str]:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SystemExit("error: megagoku launch: no command after --")
    if "--run-dir" in command or any(a.startswith("--run-dir=") for a in command):
        raise SystemExit("error: megagoku launch: give --run-dir to launch, not to the command "
                         "(the launcher owns the run dir)")
    args = ["-m", "megagoku", *command, "--run-dir", str(run_dir)]
    if "--resume" not in command:
        args += ["--resume", "auto"]
    return args


def print_failed_nodes(run_dir: Path, at_least: int) -> int:
    from megagoku.launch.events import failures_by_node, read_events

    counts = failures_by_node(read_events(run_dir))
    print(",".join(sorted(n for n, c in counts.items() if c >= at_least)))
    return 0


def launch_id(rdzv_id: str) -> str:
    """What names this launch in the event log: the rendezvous id (shared by the nodes), with
    Slurm's restart count (a requeued job keeps its id)."""
    restart = os.environ.get("SLURM_RESTART_COUNT")
    return f"{rdzv_id}.{restart}" if restart else rdzv_id


def run(args: argparse.Namespace) -> int:
    if args.failed_nodes is not None:
        return print_failed_nodes(Path(args.run_dir), args.failed_nodes)
    from torch.distributed.elastic.agent.server.api import WorkerSpec, WorkerState
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    from megagoku.launch import events as event_log
    from megagoku.launch import heartbeat, lifeline, stores
    from megagoku.launch.agent import SupervisingAgent
    from megagoku.launch.outcome import decide

    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    entry_args = worker_args(args.command, run_dir)
    rdzv_id = args.rdzv_id or os.environ.get("SLURM_JOB_ID") or uuid.uuid4().hex[:12]
    this_launch = launch_id(rdzv_id)
    events = event_log.EventLog(event_log.node_file(run_dir), this_launch)
    heartbeats = heartbeat.HeartbeatMonitor(args.heartbeat_timeout, args.startup_timeout)
    single_node = args.nnodes == 1
    # The workers inherit these: where to beat and log, which launch they belong to, who they
    # must die with, and to bind rank 0's store to the master address only.
    os.environ[heartbeat.ENV] = str(heartbeats.directory)
    os.environ[event_log.ENV] = str(events.path)
    os.environ[event_log.LAUNCH_ENV] = this_launch
    os.environ[lifeline.ENV] = str(os.getpid())
    os.environ[stores.BIND_ENV] = "1"
    if single_node:  # gloo's and NCCL's own sockets on loopback too (unless told otherwise)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // args.nproc_per_node)))
    # The stop signals are ours (forwarded to the workers), not torch's (which would tear the
    # workers down before they checkpoint).
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGHUP,SIGQUIT"
    # A fresh store for every attempt. With the rendezvous store shared (torch's default), the
    # workers of a restarted group meet in the same key space as the dead ones: process groups
    # are named by a counter that starts again at 0, so a rank can read a dead peer's gloo
    # address and fail with "Connection refused". Unshared, the first worker hosts a new store
    # on a new port in every round.
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"

    try:
        rdzv_handler, endpoint = stores.rendezvous(args.rdzv_endpoint, args.nnodes, rdzv_id)
        spec = WorkerSpec(role="trainer", local_world_size=args.nproc_per_node,
                          entrypoint=sys.executable, args=tuple(entry_args),
                          rdzv_handler=rdzv_handler, max_restarts=args.max_restarts,
                          monitor_interval=args.monitor_interval,
                          master_addr=stores.LOOPBACK if single_node else None)
        agent = SupervisingAgent(spec, DefaultLogsSpecs(), heartbeats=heartbeats, events=events,
                                 backoff_s=args.backoff, stop_timeout_s=args.stop_timeout,
                                 start_method="spawn")
        for name in ("SIGUSR1", "SIGTERM", "SIGINT"):
            signal.signal(getattr(signal, name), agent.request_stop)
        events.log("launch", nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                   max_restarts=args.max_restarts, rendezvous=endpoint,
                   heartbeats=str(heartbeats.directory), command=entry_args[2:])
        try:
            result = agent.run()
        finally:
            try:
                rdzv_handler.shutdown()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
    finally:
        heartbeats.close()

    this = event_log.of_launch(event_log.read_events(run_dir), this_launch)
    stop_signal, stop_time = agent.stop_requested, agent.stop_time
    if agent.workers_stopped:  # every rank exited 75 on a signal sent to them, not to us
        stop_signal, stop_time = "a signal to the workers", agent.attempt_started
    end = decide(run_dir, this, succeeded=result.state == WorkerState.SUCCEEDED,
                 failure=agent.failure, stop_signal=stop_signal, stop_time=stop_time,
                 trains=entry_args[2] == "train", last_step=heartbeats.last_step)
    summary = {**end.as_dict(), "attempts": agent.attempt, "launch": this_launch,
               **event_log.time_lost(this)}
    events.log("end", **summary)
    if single_node or agent.group_rank == 0:  # one node writes the summary
        (run_dir / "launch_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"launch {end.outcome} after {agent.attempt} attempt(s): {end.reason}; "
          f"{summary['failures']} failure(s) cost {summary['lost_s']:.1f} s "
          f"(redone {summary['redone_s']:.1f} s, down {summary['downtime_s']:.1f} s); "
          f"events: {events.path.parent}", file=sys.stderr)
    return end.exit_code
