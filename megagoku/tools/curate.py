"""`megagoku curate --input RAW --out OUT`: raw videos and images to a filtered, captioned,
balanced training manifest (OUT/manifest.jsonl), stage by stage (megagoku/curation/pipeline.py).

    megagoku curate --demo --out /tmp/curated          # generate test videos, curate them
    megagoku curate --config configs/curate/720p.yaml --set split.model_dir=/models/dinov2 \\
        --set filter.clip_dir=/models/clip-l14 --set filter.head_path=/models/aesthetic.pth \\
        --input videos.jsonl --out /data/curated --workers 16
    megagoku curate ... --shard 3/64      # one shard of a cluster run (curate.sbatch)
    megagoku curate ... --merge           # join the shards; balance and export once

Running the same command again resumes: finished stages are skipped, an interrupted one carries
on from the last file it finished. A bad config or input list stops before any file is read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from megagoku.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("curate", help="curate raw media into a training manifest",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="curation YAML (configs/curate/; default: the 480p tier's "
                                    "thresholds with the offline backends)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set filter.min_aesthetic=4.5")
    p.add_argument("--input", help="a folder of media, a .txt list of paths or a .jsonl list")
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    p.add_argument("--workers", type=int, help="processes for the per-file stages")
    p.add_argument("--shard", metavar="I/N", help="run shard I of N (0-based) into OUT/shards/")
    p.add_argument("--merge", action="store_true",
                   help="merge OUT/shards/, balance and export (--input is ignored)")
    p.add_argument("--demo", action="store_true",
                   help="write the built-in test videos to OUT/demo_inputs and curate them with "
                        "configs/curate/tiny.yaml (unless --config is given)")
    p.set_defaults(func=run)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected I/N, e.g. 0/8") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: I must be in 0..N-1")
    return index, count


def run(args: argparse.Namespace) -> int:
    from megagoku.config.curate import load_curate_config
    from megagoku.config.loader import CONFIGS_DIR
    from megagoku.curation.inputs import InputError
    from megagoku.curation.pipeline import merge
    from megagoku.curation.pipeline import run as curate

    logging.getLogger("megagoku.curation").setLevel(logging.INFO)
    config = args.config or (CONFIGS_DIR / "curate" / "tiny.yaml" if args.demo else None)
    overrides = list(args.overrides) + ([f"workers={args.workers}"] if args.workers else [])
    cfg = load_curate_config(config, overrides)
    out = Path(args.out)
    shard = parse_shard(args.shard) if args.shard else None
    # --merge ignores --input, so that the shards and the merge can share one command line.
    if not args.merge and bool(args.input) == bool(args.demo):
        raise ConfigError("give --input (or --demo), or --merge")
    inputs = args.input
    if args.demo:
        from megagoku.curation.synthetic import write_demo_inputs

        demo = out / "demo_inputs"
        inputs = demo / "inputs.jsonl"
        if not inputs.is_file():
            write_demo_inputs(demo)
            print(f"curate: wrote the demo's raw videos to {demo}/raw")
    try:
        stats = merge(cfg, out) if args.merge else curate(cfg, inputs, out, shard)
    except (InputError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    last = stats[-1]
    where = out / "manifest.jsonl" if last["stage"] == "export" else out / "shards"
    print(f"curate: {stats[0]['inputs']} inputs -> {last['kept']} records in {where}; "
          f"funnel in {out / 'report.md' if last['stage'] == 'export' else where}")
    return 0
