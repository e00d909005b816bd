"""`megagoku data shapes --out DIR [--count N] [--config FILE]`: the built-in moving-shapes data
written as files (VP9 WebM and H.264 MP4 clips, PNG images) with a manifest.jsonl, the input the
file-based data path reads."""

from __future__ import annotations

import argparse
import sys

from megagoku.config import load_training_config


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="data tools: write the built-in data as files",
                              description=__doc__)
    which = p.add_subparsers(dest="data", required=True)
    s = which.add_parser("shapes", help="write the moving-shapes data as files + manifest",
                         description=__doc__)
    s.add_argument("--out", required=True, help="folder for clips/, images/ and manifest.jsonl")
    s.add_argument("--count", type=int, default=64, help="samples to write (default 64)")
    s.add_argument("--fps", type=int, default=8)
    s.add_argument("--config", help="training config whose data section to use (default: built-in)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from megagoku.data.manifest import load_manifest
    from megagoku.data.shapes_files import write_shapes_files

    if args.count < 1 or args.fps < 1:
        print(f"error: --count and --fps must be at least 1, got {args.count} and {args.fps}",
              file=sys.stderr)
        return 2
    cfg = load_training_config(args.config, args.overrides)
    manifest = write_shapes_files(args.out, cfg.data, args.count, args.fps)
    records = load_manifest(manifest)
    kinds = {k: sum(r.kind == k for r in records) for k in ("video", "image")}
    print(f"wrote {kinds['video']} clips and {kinds['image']} images; manifest: {manifest}")
    return 0
