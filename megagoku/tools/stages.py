"""`megagoku stages --config configs/stages/tiny.yaml`: Goku's multi-stage training, stage by
stage, each from the previous one's final checkpoint (megagoku/config/stages.py says how a plan
reads).

Each stage runs as its own `megagoku train` process (or `megagoku launch` with
`--nproc-per-node`), in `<run_dir>/<stage>`, from a config file written there (`stage.yaml`, the
resolved config: what ran is on disk). Running the plan again continues it: a stage whose final
checkpoint exists is skipped, a stage that stopped part-way resumes from its newest valid
checkpoint. A stage stopped by SIGUSR1/SIGTERM exits 75 (requeue) and so does the plan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

from megagoku.config import ConfigError, to_dict
from megagoku.launch.exit_codes import REQUEUE


def register(subparsers) -> None:
    p = subparsers.add_parser("stages", help="run a multi-stage training plan (configs/stages/)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="stage plan YAML, e.g. configs/stages/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field in every stage, e.g. --set text.encoder=/models/t5")
    p.add_argument("--run-dir", help="where the stages run (default: the plan's run_dir)")
    p.add_argument("--only", action="append", default=[], metavar="STAGE",
                   help="run only this stage (repeatable); its init_from must be done")
    p.add_argument("--dry-run", action="store_true",
                   help="print each stage's directory, start and command; run nothing")
    p.add_argument("--nproc-per-node", type=int, default=0,
                   help="run each stage through `megagoku launch` with this many processes")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="with --nproc-per-node: the launcher's restarts per stage")
    p.set_defaults(func=run)


def final_checkpoint(stage_dir: Path, steps: int) -> Optional[Path]:
    """The stage's final checkpoint when it is there and valid, else None."""
    from megagoku.train.checkpoint import CheckpointError, step_dir_name, verify_checkpoint

    path = stage_dir / "checkpoints" / step_dir_name(steps)
    try:
        verify_checkpoint(path)
    except (CheckpointError, OSError):
        return None
    return path


def stage_command(config_file: Path, stage_dir: Path, args: argparse.Namespace) -> list[str]:
    if args.nproc_per_node > 0:
        return [sys.executable, "-m", "megagoku", "launch", "--nproc-per-node",
                str(args.nproc_per_node), "--max-restarts", str(args.max_restarts),
                "--run-dir", str(stage_dir), "--", "train", "--config", str(config_file)]
    return [sys.executable, "-m", "megagoku", "train", "--config", str(config_file),
            "--run-dir", str(stage_dir), "--resume", "auto"]


def run(args: argparse.Namespace) -> int:
    from megagoku.config.stages import load_stage_plan

    plan = load_stage_plan(args.config, args.overrides)  # every stage checked before any runs
    if args.run_dir:
        plan.run_dir = Path(args.run_dir)
    selected = [plan.stage(name) for name in args.only] or plan.stages
    print(f"stage plan {plan.name} ({plan.source}): {len(plan.stages)} stages in {plan.run_dir}",
          file=sys.stderr)
    for stage in selected:
        stage_dir = plan.stage_dir(stage)
        steps = stage.config.train.steps
        done = final_checkpoint(stage_dir, steps)
        init = None
        if stage.init_from is not None:
            before = plan.stage(stage.init_from)
            init = final_checkpoint(plan.stage_dir(before), before.config.train.steps)
            if init is None and not args.dry_run:
                raise ConfigError(f"{plan.source}: stage {stage.name!r} starts from stage "
                                  f"{before.name!r}, which has no final checkpoint (step "
                                  f"{before.config.train.steps}) in {plan.stage_dir(before)}")
        config = to_dict(stage.config)
        config["train"]["run_dir"] = str(stage_dir)
        config["checkpoint"]["init_from"] = str(init) if init is not None else (
            f"<final checkpoint of {stage.init_from}>" if stage.init_from else None)
        config["checkpoint"]["init_optimizer"] = stage.init_optimizer
        config_file = stage_dir / "stage.yaml"
        command = stage_command(config_file, stage_dir, args)
        data, par = stage.config.data, stage.config.parallel
        layout = ", ".join(f"{k} {v}" for k, v in (
            ("TP", par.tensor_parallel), ("Ulysses", par.ulysses), ("ZeRO", par.zero_stage))
            if v not in (0, 1))
        summary = (f"stage {stage.name}: {steps} steps at lr {stage.config.train.lr:g}; "
                   f"{data.frames}x{data.height}x{data.width}, images "
                   f"{'as the data has them' if data.image_fraction is None else data.image_fraction}"
                   f"{'; ' + layout if layout else ''}; from {stage.init_from or 'scratch'}"
                   f"{' (with its optimizer)' if stage.init_optimizer else ''}")
        if done is not None:
            print(f"{summary}: done ({done})", file=sys.stderr)
            continue
        print(f"{summary}\n  $ {' '.join(command)}", file=sys.stderr)
        if args.dry_run:
            continue
        stage_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(f"# stage {stage.name} of {plan.source}, written by megagoku "
                               f"stages\n" + yaml.safe_dump(json.loads(json.dumps(config)),
                                                            sort_keys=False))
        code = subprocess.run(command).returncode
        if code == REQUEUE:
            print(f"stage {stage.name} stopped on a signal with its checkpoint committed; run "
                  "the plan again to continue", file=sys.stderr)
            return REQUEUE
        if code != 0:
            print(f"error: stage {stage.name} failed (exit code {code}); its log is above, its "
                  f"run dir {stage_dir}", file=sys.stderr)
            return code
        if final_checkpoint(stage_dir, steps) is None:
            print(f"error: stage {stage.name} ended without its final checkpoint (step {steps}) "
                  f"in {stage_dir}: was train.max_minutes reached? run the plan again to "
                  "continue", file=sys.stderr)
            return 1
    return 0
