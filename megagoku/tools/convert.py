"""`megagoku convert --input CKPT_OR_RUN_DIR --output OUT [--weights ema|model] [--dtype D]`:
consolidate a training checkpoint (any TP / Ulysses / DP / ZeRO layout; a run dir means its newest
valid checkpoint) into one model directory (model.safetensors + config.json) that `megagoku
sample` and `checkpoint.init_from` take; streamed, with progress. A model directory as --input is
re-cast to --dtype. Casting to a narrower float reports how many nonzero values became 0 and how
many became inf. OUT must be a new or empty directory; one holding only the `.partial` file of an
interrupted convert is replaced.

`megagoku convert --format goku-official --input CKPT_OR_DIR --output OUT.safetensors`: the blocks
under the names and shapes of Goku's released `Block` (megagoku/models/official.py), our other
layers under ours, one safetensors file; `checkpoint.init_from` and `megagoku sample` take it.
`--format goku-official --input FILE.safetensors --config CONFIG --output NEW.safetensors` adds our
config to such a file that lacks it (weights from elsewhere).

`megagoku convert --inspect PATH [--tensors] [--json]`: verify a checkpoint or model directory
and list its step, the layout it was saved under, its files (bytes, checksum) and tensors.

Every file is verified by content (sizes, checksums, safetensors headers, floating-point tensors
only), and a tensor holding NaN or inf is refused when it is read unless `--allow-nonfinite`;
any problem is one line naming the file.

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
    p.add_argument("--input", help="checkpoint directory, run directory, or model directory "
                                   "(to re-cast its dtype)")
    p.add_argument("--output", help="new model directory")
    p.add_argument("--weights", choices=("ema", "model"),
                   help="the EMA (default) or the raw training weights; a model directory "
                        "holds one kind")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="cast floating-point tensors (default: as stored, float32)")
    p.add_argument("--format", choices=("megagoku", "goku-official"), default="megagoku",
                   help="megagoku: a model directory (default); goku-official: one safetensors "
                        "file in Goku's released block layout")
    p.add_argument("--config", help="with --format goku-official and an official-layout "
                                    "--input: the training config to add to it")
    p.add_argument("--inspect", metavar="PATH", help="verify and describe a checkpoint, run dir "
                                                     "or model directory; convert nothing")
    p.add_argument("--tensors", action="store_true", help="with --inspect: list every tensor")
    p.add_argument("--json", action="store_true", help="with --inspect: print JSON")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert weights that hold NaN or inf (refused otherwise)")
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
    if args.format == "goku-official":
        return run_official(args)
    if args.config:
        raise ConfigError("--config goes with --format goku-official")
    try:
        out = consolidate(args.input, args.output, args.weights, args.dtype,
                          allow_nonfinite=args.allow_nonfinite)
    except (ValueError, FileExistsError) as e:
        raise ConfigError(str(e)) from None
    meta = json.loads((out / "config.json").read_text())
    print(f"wrote {out}/model.safetensors: {meta['tensors']} tensors, {meta['bytes'] / 1e6:.1f} "
          f"MB ({meta['weights']} weights of step {meta['step']}, {meta['dtype']})")
    if "cast" in meta:
        cast = meta["cast"]
        print(f"cast {cast['values']} values to {cast['dtype']}: {cast['underflow']} nonzero "
              f"became 0 (underflow), {cast['overflow']} became inf (overflow)")
    return 0


def run_official(args: argparse.Namespace) -> int:
    from megagoku.config import ConfigError
    from megagoku.models.official import LayoutError
    from megagoku.train.checkpoint import CheckpointError
    from megagoku.train.official import add_config, is_official_file, write_official

    try:
        if args.config:
            if not is_official_file(args.input):
                raise ConfigError(f"--config: --input {args.input} must be an official-layout "
                                  ".safetensors file")
            out = add_config(args.input, args.config, args.output)
        else:
            out = write_official(args.input, args.output, args.weights, args.dtype)
    except (ValueError, FileExistsError, CheckpointError, LayoutError) as e:
        raise ConfigError(str(e)) from None
    print(f"wrote {out}: {out.stat().st_size / 1e6:.1f} MB in the goku-official layout")
    return 0


def print_report(report: dict, list_tensors: bool, out=None) -> None:
    from megagoku.storage import entry_checksum

    out = out or sys.stdout
    total = sum(t["bytes"] for t in report["tensors"].values())
    print(f"{report['kind']} {report['path']}: verified (sizes, checksums and headers of every "
          "file)", file=out)
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
        algorithm, digest = entry_checksum(entry)
        print(f"  {name}: {entry['bytes']} bytes, {algorithm} {digest[:16]}", file=out)
    if list_tensors:
        for name, t in report["tensors"].items():
            print(f"  {name}: {t['dtype']} {t['shape']}", file=out)
