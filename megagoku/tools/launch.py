"""`megagoku launch [options] -- train --config FILE [--set ...]`: run a training command on
every rank of this node through torch's elastic agent, fault-tolerantly (`megagoku/launch/`).

The workers run `python -m megagoku <command> --run-dir RUN_DIR --resume auto`, so the first
attempt starts the run and every restart continues it from the newest valid checkpoint. Events go
to RUN_DIR/events.jsonl, heartbeats to RUN_DIR/heartbeats/, and at the end RUN_DIR/launch_summary.json
says how many failures there were and how much time they cost.

Several nodes: start the same command on each with --nnodes N and one --rdzv-endpoint (host:port
of node 0), e.g. from an sbatch script (`launchers/`).

Exit codes: 0 when the run finished; 75 (exit_codes.REQUEUE) after SIGUSR1/SIGTERM, once the
workers committed a checkpoint: run it again (a Slurm requeue) and it continues; 1 when the
restarts are used up or it cannot start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(subparsers) -> None:
    p = subparsers.add_parser("launch", help="fault-tolerant launch of a training command "
                              "(elastic agent + heartbeats + restarts from checkpoints)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc-per-node", type=int, default=1, help="workers on this node")
    p.add_argument("--nnodes", type=int, default=1, help="nodes taking part (default 1)")
    p.add_argument("--rdzv-endpoint", help="host:port of the rendezvous (several nodes; "
                                           "default: this machine, a free port)")
    p.add_argument("--rdzv-id", default=None, help="job id shared by the nodes (default: "
                                                    "SLURM_JOB_ID, else a random one)")
    p.add_argument("--run-dir", required=True, help="the run's directory (checkpoints, metrics, "
                                                    "events); passed to the command")
    p.add_argument("--max-restarts", type=int, default=3, help="restarts after a crash or hang")
    p.add_argument("--heartbeat-timeout", type=float, default=300.0,
                   help="seconds without a step before a rank counts as hung (default 300)")
    p.add_argument("--startup-timeout", type=float, default=900.0,
                   help="seconds from start to the first step before a rank counts as hung")
    p.add_argument("--backoff", type=float, default=5.0,
                   help="seconds before the first restart, doubled each time (max 60)")
    p.add_argument("--stop-timeout", type=float, default=300.0,
                   help="seconds the workers get to checkpoint after SIGUSR1/SIGTERM")
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
    from megagoku.launch.events import EventLog, failures_by_node

    counts = failures_by_node(EventLog(run_dir / "events.jsonl").read())
    print(",".join(sorted(n for n, c in counts.items() if c >= at_least)))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.failed_nodes is not None:
        return print_failed_nodes(Path(args.run_dir), args.failed_nodes)
    from torch.distributed.elastic.agent.server.api import WorkerSpec
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous import registry as rdzv_registry

    from megagoku.launch.exit_codes import REQUEUE
    from megagoku.launch.agent import SupervisingAgent
    from megagoku.launch.events import ENV as EVENTS_ENV
    from megagoku.launch.events import EventLog, time_lost
    from megagoku.launch.heartbeat import ENV as HEARTBEAT_ENV
    from megagoku.launch.heartbeat import HeartbeatMonitor

    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    entry_args = worker_args(args.command, run_dir)
    events = EventLog(run_dir / "events.jsonl")
    heartbeats = HeartbeatMonitor(run_dir / "heartbeats", args.heartbeat_timeout,
                                  args.startup_timeout)
    # The workers inherit these: where to beat, where to log.
    os.environ[HEARTBEAT_ENV] = str(heartbeats.directory)
    os.environ[EVENTS_ENV] = str(events.path)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // args.nproc_per_node)))
    # The stop signals are ours (forwarded to the workers), not torch's (which would tear the
    # workers down before they checkpoint).
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGINT,SIGHUP,SIGQUIT"
    # A fresh store for every attempt. With the rendezvous store shared (torch's default), the
    # workers of a restarted group meet in the same key space as the dead ones: process groups
    # are named by a counter that starts again at 0, so a rank can read a dead peer's gloo
    # address and fail with "Connection refused". Unshared, the first worker hosts a new store
    # on a new port in every round.
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"

    endpoint = args.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    rdzv = RendezvousParameters(backend="c10d", endpoint=endpoint,
                                run_id=args.rdzv_id or os.environ.get("SLURM_JOB_ID")
                                or uuid.uuid4().hex[:12],
                                min_nodes=args.nnodes, max_nodes=args.nnodes)
    spec = WorkerSpec(role="trainer", local_world_size=args.nproc_per_node,
                      entrypoint=sys.executable, args=tuple(entry_args),
                      rdzv_handler=rdzv_registry.get_rendezvous_handler(rdzv),
                      max_restarts=args.max_restarts, monitor_interval=args.monitor_interval)
    agent = SupervisingAgent(spec, DefaultLogsSpecs(), heartbeats=heartbeats, events=events,
                             backoff_s=args.backoff, stop_timeout_s=args.stop_timeout,
                             start_method="spawn")
    for name in ("SIGUSR1", "SIGTERM"):
        signal.signal(getattr(signal, name), agent.request_stop)
    events.log("launch", nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
               max_restarts=args.max_restarts, command=entry_args[2:])
    try:
        result = agent.run()
    finally:
        rdzv_handler = spec.rdzv_handler
        try:
            rdzv_handler.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    if agent.requeue:
        outcome, code = "requeue", REQUEUE
    elif result.is_failed():
        outcome, code = "failed", 1
    else:
        outcome, code = "succeeded", 0
    summary = {"outcome": outcome, "attempts": agent.attempt, **time_lost(events.read())}
    events.log("end", **summary)
    (run_dir / "launch_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    message = (f"launch {outcome} after {agent.attempt} attempt(s); {summary['failures']} "
               f"failure(s) cost {summary['lost_s']:.1f} s (redone {summary['redone_s']:.1f} s, "
               f"down {summary['downtime_s']:.1f} s); events: {events.path}")
    if outcome == "failed":
        message += f"; last failure: {agent.last_failure}"
    print(message, file=sys.stderr)
    return code
