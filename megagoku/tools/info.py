"""`megagoku info --config FILE [--seq-len N] [--text-len N]`: parameter count (total and per part)
and FLOPs per token, as JSON. The model is built on the meta device: nothing is allocated, so the
8B preset counts in a second on a laptop.

`--plan --gpus N --tp T --sp S --zero Z --seq-len L [--checkpointing P] [--megatron-sp]` adds the
per-GPU memory plan of that layout (weights, gradients, optimizer states, EMA, activations: the
steady state; and the peak: start-up, the optimizer step's working memory, checkpoint snapshots,
a fragmentation allowance), to choose a layout before booking a cluster (see
megagoku/train/memory_plan.py for what is counted; `megagoku bench memory` measures it)."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from megagoku.config import ConfigError, ModelConfig, load_model_config
from megagoku.config.schema import ZERO_BUCKET_ELEMENTS
from megagoku.models.flops import flops_per_token


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    from megagoku.models import build_model
    from megagoku.parallel import ensure_single_process_groups

    ensure_single_process_groups()
    model = build_model(cfg, device="meta")
    parts: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        key = f"blocks.{name.split('.')[2]}" if top == "blocks" else top
        parts[key] += param.numel()
    parts["total"] = sum(p.numel() for p in model.parameters())
    return dict(parts)


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameter count and FLOPs of a model config",
                              description=__doc__)
    p.add_argument("--config", required=True, help="model preset or training config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per sample for FLOPs")
    p.add_argument("--text-len", type=int, default=120, help="caption tokens for FLOPs")
    plan = p.add_argument_group("memory plan")
    plan.add_argument("--plan", action="store_true", help="print the per-GPU memory plan")
    plan.add_argument("--gpus", type=int, default=8)
    plan.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    plan.add_argument("--sp", type=int, default=1, help="Ulysses sequence-parallel size")
    plan.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3), help="ZeRO stage")
    plan.add_argument("--checkpointing", default="none",
                      choices=("none", "attention", "mlp", "full"))
    plan.add_argument("--activation-checkpoint-every", "--checkpoint-every", type=int, default=1,
                      dest="activation_checkpoint_every",
                      help="apply --checkpointing to every k-th block (--checkpoint-every: its "
                           "old name)")
    plan.add_argument("--megatron-sp", action="store_true",
                      help="megatron sequence parallelism inside the TP group")
    plan.add_argument("--fragmentation", type=float, default=0.10,
                      help="the allocator's fragmentation allowance, a fraction of the peak "
                           "(default 0.10)")
    plan.add_argument("--bucket-elements", type=int,
                      default=ZERO_BUCKET_ELEMENTS,
                      help="parallel.zero_bucket_elements: DeepSpeed's buckets (default "
                           f"{ZERO_BUCKET_ELEMENTS:.0e})")
    plan.add_argument("--rank0-copies", type=int, default=0, choices=(0, 1, 2),
                      help="whole copies of the model rank 0 keeps for samples (sample.every) "
                           "and evaluations (eval.every) during training")
    plan.add_argument("--activation-bytes", type=int, default=2,
                      help="bytes per activation element (2: bf16 autocast, 4: fp32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, least in (("seq_len", 1), ("text_len", 0), ("gpus", 1), ("tp", 1), ("sp", 1),
                        ("activation_checkpoint_every", 1), ("activation_bytes", 1),
                        ("bucket_elements", 1)):
        if getattr(args, name) < least:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least {least}, got "
                              f"{getattr(args, name)}")
    cfg = load_model_config(args.config, args.overrides)
    counts = parameter_counts(cfg)
    flops = flops_per_token(cfg, args.seq_len, args.text_len)
    report = {
        "config": args.config,
        "model": cfg.name,
        # Goku's released Block, or the earlier megagoku block (model.attn_norm, qk_norm, ...).
        "block": "goku-released" if cfg.released_block else
                 f"earlier megagoku (attn_norm={cfg.attn_norm}, qk_norm={cfg.qk_norm}, "
                 f"mlp_norm_gain={cfg.mlp_norm_gain}, modulation_fp32={cfg.modulation_fp32})",
        "parameters": counts["total"],
        "parameters_billions": round(counts["total"] / 1e9, 4),
        "parameters_by_part": {k: v for k, v in counts.items() if k != "total"},
        "seq_len": args.seq_len,
        "text_len": args.text_len,
        "flops_per_token_forward": flops["forward"],
        "flops_per_token_train": flops["train"],
    }
    if args.plan:
        from megagoku.train.memory_plan import plan

        try:
            report["memory_plan_per_gpu"] = plan(
                cfg, args.gpus, args.tp, args.sp, args.zero, args.seq_len, args.checkpointing,
                args.activation_checkpoint_every, args.megatron_sp, args.activation_bytes,
                args.fragmentation, bucket_elements=args.bucket_elements,
                rank0_copies=args.rank0_copies).as_dict()
        except ValueError as e:
            raise ConfigError(f"{args.config}: {e}") from None
    print(json.dumps(report, indent=2))
    return 0
