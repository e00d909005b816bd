"""`megagoku train-vae [--config FILE] [--set section.key=value ...] [--run-dir DIR] [--overwrite]`:
train the 3D causal VAE on one process; its `<run dir>/vae` folder is what
`latent: {kind: causal_vae, path: ...}` loads. Without --config: configs/vae/tiny.yaml."""

from __future__ import annotations

import argparse
import time

from megagoku.config import load_vae_training_config
from megagoku.progress import format_duration
from megagoku.tools.train import add_run_options


def register(subparsers) -> None:
    p = subparsers.add_parser("train-vae", help="train the 3D causal VAE (L1/MSE + KL, optional "
                              "PatchGAN) for latent.kind causal_vae", description=__doc__)
    p.add_argument("--config", help="VAE training config YAML (default: configs/vae/tiny.yaml)")
    add_run_options(p, "VAE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_vae_training_config(args.config, args.overrides)
    from megagoku.train.vae_trainer import train_vae  # heavy imports only after the config is valid

    source = args.config or "configs/vae/tiny.yaml"
    started = time.perf_counter()
    result = train_vae(config, args.run_dir or config.train.run_dir, source=source,
                       overwrite=args.overwrite)
    # The wall time of the whole run: data, training, saves and the final figures.
    print(f"trained {result.steps} steps in {format_duration(time.perf_counter() - started)}; "
          f"recon L1 {result.l1_start:.4f} -> {result.l1_end:.4f} ({result.data_skipped} "
          f"samples skipped); VAE: {result.vae_dir}")
    if result.final is not None:
        print(f"reconstruction of {result.final.summary()}")
        print(f"original (above) vs reconstruction: {result.final.picture}")
    return 0
