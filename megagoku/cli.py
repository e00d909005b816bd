"""The `megagoku` command: parses arguments and dispatches to megagoku.tools; no logic here."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from megagoku.config import ConfigError
from megagoku.launch import argv as launch_argv
from megagoku.parallel.distributed import strip_local_rank
from megagoku.tools import (ablate, bench, cache, convert, curate, data, demo, info, launch,
                            sample, stages, stand_ins, train, train_vae)
from megagoku.tools import eval as eval_tool  # (not `eval`: that would hide the builtin here)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megagoku", description="Goku-style flow models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for tool in (train, launch, stages, train_vae, sample, convert, curate, info, demo, bench,
                 data, cache, stand_ins, eval_tool, ablate):
        tool.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Tokenizer worker threads fight the training loop for 2 cores (measured 3x slower).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    # The deepspeed launcher inserts --local_rank=N before our arguments; the rank is read from
    # the environment (megagoku.parallel.distributed).
    argv = strip_local_rank(sys.argv[1:] if argv is None else argv)
    # launchers/deepspeed/run.sh on several nodes sends the argv through a remote shell as one
    # inert word (megagoku/launch/argv.py).
    argv = launch_argv.decode(argv)
    args = build_parser().parse_args(argv)
    from megagoku.data.errors import DataError
    from megagoku.train.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:  # the data as a whole cannot feed the run (its files, its workers)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (which saves first)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
