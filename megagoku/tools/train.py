"""`megagoku train --config FILE [--set section.key=value ...] [--run-dir DIR]`.

Under a launcher every rank runs this same command; the `parallel` config section sets the grid."""

from __future__ import annotations

import argparse
import sys

from megagoku.config import load_training_config
from megagoku.launch.events import EventLog
from megagoku.launch.exit_codes import REQUEUE, ROLLBACK


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (one process, or every rank of a "
                              "torchrun / deepspeed / srun / mpirun launch)",
                              description=__doc__)
    p.add_argument("--config", required=True, help="training config YAML (e.g. configs/tiny.yaml)")
    add_run_options(p, "checkpoints")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue a run exactly: auto = the run dir's newest valid checkpoint "
                        "(a new run if it has none); or a checkpoint / run dir "
                        "(default: checkpoint.resume)")
    p.set_defaults(func=run)


def add_run_options(p: argparse.ArgumentParser, outputs: str) -> None:
    """--set, --run-dir and --overwrite, as every training command takes them."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--run-dir", help="output directory (default: train.run_dir)")
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the metrics and {outputs} of an earlier run in --run-dir")


def run(args: argparse.Namespace) -> int:
    config = load_training_config(args.config, args.overrides)
    # Heavy imports only after the config is valid.
    from megagoku.parallel.distributed import discover
    from megagoku.train.trainer import TrainingAnomaly, train

    run_dir = args.run_dir or config.train.run_dir
    try:
        result = train(config, run_dir, source=args.config, overwrite=args.overwrite,
                       resume=args.resume)
        while result.stop_reason == "rollback":
            launch = discover()
            if launch.world_size > 1 or launch.launcher != "none":
                return ROLLBACK  # the launcher restarts every rank from the checkpoint
            # One process: roll back here, from the newest valid checkpoint of the run dir.
            print("rolling back to the newest valid checkpoint; the anomalous steps will be "
                  "skipped", file=sys.stderr)
            result = train(config, run_dir, source=args.config, resume="auto")
    except TrainingAnomaly as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.checkpoint is not None:  # rank 0 of a launch writes; the others stay quiet
        print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; "
              f"checkpoint: {result.checkpoint}")
        events = EventLog.from_env()  # `megagoku launch` judges the run by this checkpoint
        if events is not None:
            events.log("finished", step=result.steps, steps=config.train.steps,
                       stop_reason=result.stop_reason, checkpoint=str(result.checkpoint))
    # Stopped by a signal: the checkpoint is committed; ask to be run again.
    return REQUEUE if result.stop_reason == "signal" else 0
