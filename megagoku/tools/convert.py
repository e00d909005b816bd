"""`megagoku convert --input CKPT_OR_RUN_DIR --output OUT [--weights ema|model] [--dtype D]`:
consolidate a training checkpoint (any TP / Ulysses / DP / ZeRO layout; a run dir means its newest
valid checkpoint) into one model directory (model.safetensors + config.json) that `megagoku
sample` and `checkpoint.init_from` take; streamed, with progress.

`megagoku convert --inspect PATH [--tensors] [--json]`: verify a checkpoint or model directory
and list its step, the layout it was saved under, its files (bytes, sha256) and tensors.

No reshard step is needed: checkpoints store every tensor whole, so a checkpoint saved under one
layout (say TP=4, ZeRO-3 on 64 ranks) resumes or initialises a run under any other.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="consolidate a checkpoint into a model directory, "
                              "or --inspect one", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="checkpoint directory or run directory")
    p.add_argument("--output", help="new model directory")
    p.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="the EMA (default) or the raw training weights")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="cast floating-point tensors (default: as stored, float32)")
    p.add_argument("--inspect", metavar="PATH", help="verify and describe a checkpoint, run dir "
                                                     "or model directory; convert nothing")
    p.add_argument("--tensors", action="store_true", help="with --inspect: list every tensor")
    p.add_argument("--json", action="store_true", help="with --inspect: print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megagoku.config import ConfigError
    from megagoku.train.export import consolidate, inspect

    if args.inspect:
        if args.input or args.output:
            raise ConfigError("--inspect takes no --input or --output")
        report = inspect(args.inspect)
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            print_report(report, args.tensors)
        return 0
    if not args.input or not args.output:
        raise ConfigError("convert needs --input and --output (or --inspect PATH)")
    try:
        out = consolidate(args.input, args.output, args.weights, args.dtype)
    except (ValueError, FileExistsError) as e:
        raise ConfigError(str(e)) from None
    meta = json.loads((out / "config.json").read_text())
    print(f"wrote {out}/model.safetensors: {meta['tensors']} tensors, {meta['bytes'] / 1e6:.1f} "
          f"MB ({meta['weights']} weights of step {meta['step']}, {meta['dtype']})")
    return 0


def print_report(report: dict, list_tensors: bool, out=None) -> None:
    out = out or sys.stdout
    total = sum(t["bytes"] for t in report["tensors"].values())
    print(f"{report['kind']} {report['path']}: verified (sizes and sha256 of every file)", file=out)
    print(f"  step {report['step']}", file=out)
    if report["kind"] == "checkpoint":
        par = report.get("parallel") or {}
        print(f"  saved by {report.get('world_size')} ranks under tensor_parallel="
              f"{par.get('tensor_parallel')}, ulysses={par.get('ulysses')}, zero_stage="
              f"{par.get('zero_stage')}; loads under any layout (tensors stored whole)", file=out)
        groups = Counter(key.split("/")[0] for key in report["tensors"])
        print("  tensors: " + ", ".join(f"{g} {n}" for g, n in sorted(groups.items()))
              + f" ({total / 1e6:.1f} MB)", file=out)
    else:
        print(f"  {report['weights']} weights, {report['dtype']}, from {report['source']}; "
              f"{len(report['tensors'])} tensors ({total / 1e6:.1f} MB)", file=out)
    for name, entry in sorted(report["files"].items()):
        print(f"  {name}: {entry['bytes']} bytes, sha256 {entry['sha256'][:16]}", file=out)
    if list_tensors:
        for name, t in report["tensors"].items():
            print(f"  {name}: {t['dtype']} {t['shape']}", file=out)
