"""`megagoku data shapes --out DIR [--count N] [--config FILE] [--overwrite]`: the built-in
moving-shapes data written as files (VP9 WebM and H.264 MP4 clips, PNG images) with a
manifest.jsonl, the input the file-based data path reads. A folder that already holds such data
is refused unless --overwrite replaces it."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

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
    s.add_argument("--overwrite", action="store_true",
                   help="replace the manifest.jsonl, clips/ and images/ already in --out")
    s.set_defaults(func=run_shapes)


OUTPUTS = ("manifest.jsonl", "clips", "images")


def prepare_out(out: Path, overwrite: bool) -> None:
    """A data folder is written whole or not at all: a folder that already holds a manifest, or
    its clips, is refused (a smaller --count would cut the manifest and leave the old clips on
    disk), unless --overwrite removes them first. One line for a path that cannot be a folder."""
    from megagoku.config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    used = [name for name in OUTPUTS if (out / name).exists()]
    if used and not overwrite:
        raise ConfigError(f"--out {out}: already holds {', '.join(used)}; pass --overwrite to "
                          "replace them, or choose another folder")
    try:
        for name in used:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".megagoku-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror})") from None


def run_shapes(args: argparse.Namespace) -> int:
    from megagoku.data.manifest import load_manifest
    from megagoku.data.shapes_files import write_shapes_files

    if args.count < 1 or args.fps < 1:
        print(f"error: --count and --fps must be at least 1, got {args.count} and {args.fps}",
              file=sys.stderr)
        return 2
    cfg = load_training_config(args.config, args.overrides)
    prepare_out(Path(args.out), args.overwrite)
    manifest = write_shapes_files(args.out, cfg.data, args.count, args.fps)
    records = load_manifest(manifest)
    kinds = {k: sum(r.kind == k for r in records) for k in ("video", "image")}
    print(f"wrote {kinds['video']} clips and {kinds['image']} images; manifest: {manifest}")
    return 0
