"""`megagoku ablate rf-vs-ddpm [--steps N --eval-every K --out DIR ...]`: Goku's Table 2 pilot
(rectified flow vs DDPM) on a budget: the same GokuTransformer, data, optimizer, seed and step
budget trained with each objective in one process, scored at the same steps by a Fréchet
distance in the in-repo classifier's features (fd_shapes; not FID) and conditional accuracy.
Writes results.json, table.md, plot.png and sample grids to --out, and prints the step ratio at
which RF first reaches DDPM's final score (the paper: ~2.5x), or that it does not.

Budgets:
  --budget cpu (default): 0.8M-parameter model, 16 px images, 2400 steps per objective of 32
      images, scored every 400 steps on 16 images per class with 50 sampling steps: 21 min on
      the project's 2-core CPU with --threads 1, training the evaluation classifier included
      (BENCHMARKS.md).
  --budget gpu: 9.3M-parameter model (depth 6, width 256), 32 px images, 60000 steps of 128
      images, scored every 5000 steps on 100 images per class with 250 sampling steps (DiT's),
      --device cuda. Not run by us.
Any option below overrides the budget's value."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("ablate", help="ablations: rf-vs-ddpm (Goku Table 2 on a budget)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=("rf-vs-ddpm",))
    p.add_argument("--budget", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--steps", type=int, help="training steps per objective")
    p.add_argument("--eval-every", type=int, help="score every this many steps")
    p.add_argument("--out", default="checkpoints/ablate_rf_vs_ddpm", help="output folder")
    p.add_argument("--samples-per-class", type=int, help="generated images per class per score")
    p.add_argument("--reference-per-class", type=int, help="real images per class (reference)")
    p.add_argument("--sample-steps", type=int, help="Euler steps (RF) = ancestral steps (DDPM)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale for both")
    p.add_argument("--schedule", choices=("linear", "cosine"), help="DDPM beta schedule")
    p.add_argument("--ddpm-sampler", choices=("ancestral", "ddim"),
                   help="DDPM's sampler (default ancestral, DDPM's own)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--objectives", help="comma-separated subset of rf,ddpm (default both)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (the BENCHMARKS.md figure: 1); default: torch's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megagoku.config import ConfigError
    from megagoku.evaluation.ablation import AblationConfig, gpu_budget

    cfg = gpu_budget() if args.budget == "gpu" else AblationConfig()
    fields = {"steps": args.steps, "eval_every": args.eval_every,
              "samples_per_class": args.samples_per_class,
              "reference_per_class": args.reference_per_class,
              "sample_steps": args.sample_steps, "cfg_scale": args.cfg,
              "schedule": args.schedule, "ddpm_sampler": args.ddpm_sampler, "seed": args.seed,
              "device": args.device}
    cfg = replace(cfg, **{k: v for k, v in fields.items() if v is not None})
    if args.objectives:
        cfg = replace(cfg, objectives=tuple(o.strip() for o in args.objectives.split(",")))
    if args.steps is not None and args.eval_every is None and cfg.eval_every > cfg.steps:
        cfg = replace(cfg, eval_every=cfg.steps)
    try:
        cfg.check("megagoku ablate rf-vs-ddpm")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.threads is not None:
        if args.threads <= 0:
            raise ConfigError(f"--threads: must be positive, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no GPU here (use --device cpu, or the cpu budget)")
    from megagoku.evaluation.ablation import run_ablation
    from megagoku.parallel import ensure_single_process_groups

    ensure_single_process_groups()  # the model's megatron layers need their (1-rank) groups
    run_ablation(cfg, Path(args.out), say=lambda s: print(s, file=sys.stderr, flush=True))
    return 0
