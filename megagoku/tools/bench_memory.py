"""`megagoku bench memory`: the memory plan (`info --plan`, train/memory_plan.py) held against
this machine's ranks.

`--nproc N` local gloo ranks (started as torchrun starts them) each run the training config for
`--steps` steps in a scratch run dir, through the real trainer (construction, DeepSpeed, the
steps, the final checkpoint), and report the peak of their resident memory (RSS, ru_maxrss)
above what the process held before the model existed (Python, torch, DeepSpeed imported): the
run's own memory. Printed per rank beside the plan's peak for the same layout on the CPU (the
checkpoint snapshot's host copies included), as a ratio. Ranks that train on a GPU report
`torch.cuda.max_memory_allocated` instead, held against the GPU plan (not measured yet: no GPU in
the sessions so far), e.g. on one 8-GPU node:
    megagoku bench memory --config configs/goku_2b.yaml --nproc 8 --steps 5 \
        --set parallel.zero_stage=3 --set data.tokens_per_step=4096

`--meta` builds the model on the meta device on each rank instead (nothing allocated: Goku-8B
fits any machine) and counts the bytes of the parameters each rank would materialise, its TP
piece or its ZeRO-3 partition (`parallel.shards.meta_owned_bytes`), beside the plan's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

MIB = 1024 ** 2


def register(which) -> None:
    m = which.add_parser("memory", help="measured peak memory per rank against the plan",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--config", required=True, help="training config (YAML)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides (repeatable), e.g. parallel.zero_stage=3")
    m.add_argument("--nproc", type=int, default=4, help="local ranks (default 4)")
    m.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    m.add_argument("--meta", action="store_true",
                   help="count the bytes each rank would materialise on the meta device")
    m.add_argument("--timeout", type=float, default=1800, help="seconds for the ranks")
    m.add_argument("--json", help="also write the results to this file")
    m.set_defaults(func=run_memory)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _measure_saves() -> list[dict]:
    """Each checkpoint save of this process (phase 1, what training waits for), measured as it
    runs: the seconds it blocked, resident memory before and after it (the host copies are kept
    for the next save), the peak before it and after it. The trainer's own `save` does the work;
    this wraps it for the benchmark only."""
    from megagoku.train.components.checkpointing import CheckpointSaver

    saves: list[dict] = []
    save = CheckpointSaver.save

    def measured(self, step: int) -> float:
        before, peak_before = _rss_bytes(), _max_rss_bytes()
        blocked = save(self, step)
        saves.append({"step": step, "blocked_s": blocked, "async": self.checkpointer.async_save,
                      "rss_before_bytes": before, "rss_after_bytes": _rss_bytes(),
                      "max_rss_before_bytes": peak_before, "max_rss_after_bytes": _max_rss_bytes()})
        return blocked

    CheckpointSaver.save = measured
    return saves


def rank_main(spec: dict) -> dict:
    """One rank: train (or build on meta) and measure."""
    import torch

    from megagoku.parallel.deepspeed_import import import_deepspeed
    import_deepspeed()  # before the baseline: not the run's memory

    from megagoku.config import load_training_config
    from megagoku.parallel import collectives

    config = load_training_config(spec["config"], spec["overrides"])
    if spec["meta"]:
        from megagoku.models import build_model
        from megagoku.parallel import initialize_groups
        from megagoku.parallel.distributed import init_distributed, shutdown
        from megagoku.parallel.shards import meta_owned_bytes

        init_distributed("gloo")
        try:
            initialize_groups(config.parallel)
            model = build_model(config.model, "meta")  # nothing allocated
            return {"rank": collectives.rank(),
                    "would_materialise_bytes": meta_owned_bytes(
                        model, zero3=config.parallel.zero_stage == 3)}
        finally:
            shutdown()
    from megagoku.train.trainer import train

    baseline = _rss_bytes()
    run_dir = Path(spec["run_dir"])
    saves = _measure_saves()
    train(config, run_dir, source=spec["config"], overwrite=True)
    out = {"rank": int(os.environ["RANK"]), "baseline_bytes": baseline,
           "max_rss_bytes": _max_rss_bytes(),
           "measured_bytes": max(0, _max_rss_bytes() - baseline), "saves": saves}
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:  # trained on it
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _launch(args: argparse.Namespace, work: Path) -> list[dict]:
    from megagoku.parallel.local_ranks import RankFailed, run_ranks

    overrides = [*args.overrides, f"train.steps={args.steps}", "train.max_minutes=0",
                 f"train.run_dir={work / 'run'}"]
    spec = {"config": args.config, "overrides": overrides, "meta": args.meta,
            "run_dir": str(work / "run"), "out_dir": str(work)}
    try:
        run_ranks(args.nproc, ["-m", "megagoku.tools.bench_memory", json.dumps(spec)],
                  timeout=args.timeout,
                  extra_env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    except RankFailed as failed:
        raise SystemExit(f"bench memory: {failed}")
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(args.nproc)]


def _print_saves(ranks: list[dict]) -> None:
    """Per save: what training waited for, at most over the ranks, and the resident memory it
    added and the peak it reached on the rank where each is largest."""
    for i, save in enumerate(ranks[0]["saves"]):
        each = [r["saves"][i] for r in ranks]
        added = max(s["rss_after_bytes"] - s["rss_before_bytes"] for s in each)
        peak = max(s["max_rss_after_bytes"] - r["baseline_bytes"] for s, r in zip(each, ranks))
        print(f"save at step {save['step']} ({'async' if save['async'] else 'sync'}): training "
              f"blocked {max(s['blocked_s'] for s in each):.3f} s; resident "
              f"{added / MIB:+.1f} MiB (host copies, kept for the next save); peak so far "
              f"{peak / MIB:.1f} MiB")


def run_memory(args: argparse.Namespace) -> int:
    from megagoku.config import load_training_config
    from megagoku.train.memory_plan import plan

    import torch

    config = load_training_config(args.config, args.overrides)
    par = config.parallel
    with tempfile.TemporaryDirectory(prefix="megagoku-bench-memory-") as tmp:
        ranks = _launch(args, Path(tmp))
    # On a GPU the ranks' peak is torch's max_memory_allocated, against the GPU plan (the
    # snapshot's host copies are not in it); on the CPU, RSS against the CPU plan.
    gpu = any("cuda_max_allocated_bytes" in r for r in ranks)
    if gpu:
        for r in ranks:
            r["measured_bytes"] = r["cuda_max_allocated_bytes"]
    precision = config.train.precision
    if precision == "auto":  # as train/step.py resolves it: bf16 autocast on a GPU
        precision = "bf16" if gpu or (config.train.device != "cpu" and
                                      torch.cuda.is_available()) else "fp32"
    def planned(rank0_copies: int):
        return plan(config.model, args.nproc, par.tensor_parallel, par.ulysses, par.zero_stage,
                    config.data.tokens_per_step, par.activation_checkpointing,
                    par.activation_checkpoint_every, par.sequence_parallel,
                    2 if precision == "bf16" else 4, device="cuda" if gpu else "cpu",
                    bucket_elements=par.zero_bucket_elements, rank0_copies=rank0_copies)

    expected = planned(0)
    # rank 0 keeps a whole copy of the model per periodic sampler and evaluator that ran
    copies = sum(0 < every <= args.steps for every in (config.sample.every, config.eval.every))
    for_rank = {0: planned(copies)} if copies else {}
    layout = (f"{args.nproc} ranks, TP={par.tensor_parallel} x Ulysses={par.ulysses} x "
              f"DP={expected.data_parallel}, ZeRO-{par.zero_stage}")
    print(f"{config.model.name}: {layout}")
    if args.meta:
        print(f"{'rank':>4} {'would materialise MiB':>22} {'plan weights MiB':>17} {'ratio':>6}")
        for r in ranks:
            ratio = r["would_materialise_bytes"] / expected.weights_bytes
            print(f"{r['rank']:>4} {r['would_materialise_bytes'] / MIB:>22.1f} "
                  f"{expected.weights_bytes / MIB:>17.1f} {ratio:>6.3f}")
    else:
        print(f"plan ({'GPU' if gpu else 'CPU'}): steady {expected.steady_bytes / MIB:.1f} MiB, peak "
              f"{expected.peak_bytes / MIB:.1f} MiB (start-up "
              f"{expected.startup_peak_bytes / MIB:.1f}, training "
              f"{expected.training_peak_bytes / MIB:.1f}, fragmentation "
              f"{expected.fragmentation:.0%})"
              + (f"; rank 0 {for_rank[0].peak_bytes / MIB:.1f} MiB with its {copies} "
                 "sampling/evaluation copies of the model" if copies else ""))
        what = "max allocated MiB" if gpu else "measured peak MiB"
        print(f"{'rank':>4} {'baseline MiB':>13} {what:>18} {'plan peak MiB':>14} "
              f"{'measured/plan':>14}")
        for r in ranks:
            peak = for_rank.get(r["rank"], expected).peak_bytes
            print(f"{r['rank']:>4} {r['baseline_bytes'] / MIB:>13.1f} "
                  f"{r['measured_bytes'] / MIB:>18.1f} {peak / MIB:>14.1f} "
                  f"{r['measured_bytes'] / peak:>14.3f}")
        _print_saves(ranks)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"layout": layout, "plan": expected.as_dict(), "ranks": ranks,
             "rank0_plan": for_rank[0].as_dict() if copies else None}, indent=1))
    return 0


if __name__ == "__main__":  # one rank, started by `_launch`
    spec = json.loads(sys.argv[1])
    result = rank_main(spec)
    Path(spec["out_dir"], f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)
