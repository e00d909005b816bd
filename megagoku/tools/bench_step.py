"""`megagoku bench step`: one training step (forward and loss, backward, clipping and AdamW) of
a megagoku model on one pack, against the same step of diffusers' `WanTransformer3DModel` at the
same width, heads, depth and tokens (`megagoku/tools/bench_peer.py`), in the same run.

The pack is `--samples` samples of `--tokens` tokens in all (equal lengths, or `--mix mixed`:
seeded lengths from 1/4 to 7/4 of the mean in whole frames of one size, so samples differ in
duration; or `--lengths` exactly), each a latent of a (T, H, W) grid of patches with a caption
of `--text-tokens` tokens, packed as the trainer packs it (`data.packing.pack`). Both models take
the same samples and the same optimizer step code (`optim.Update`: clip-grad-norm, then the
project's AdamW, `optim.adamw`, torch's fused one, as the trainer steps; the optimizer is not the
model's, so the peer gets it too). The two systems' steps are interleaved, in alternating order,
`--repeats` times after `--warmup` steps each, so that both see the same load on a shared
machine; each phase is the median over the repeats and the spread of tokens/s is printed.

Printed: tokens/s; step time split into forward (and loss) / backward / optimizer; achieved
TFLOP/s (the model's FLOPs of the pack, `models.flops.pack_train_flops`: the useful work, the same
count for both systems) and MFU against the device's matmul peak: on a CPU measured in the same
run (the best fp32 GEMM rate of a 2048^3 product, measured once per round), on a GPU the known
dense bf16 peak of the card (the measured bf16 GEMM rate is printed beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from megagoku.config import ConfigError, ModelConfig, load_model_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by the name torch reports, first match wins.
GPU_BF16_PEAK_TFLOPS = (("H200", 989.4), ("GH200", 989.4), ("H100 PCIe", 756.0),
                        ("H100 NVL", 835.0), ("H100", 989.4), ("H800", 989.4), ("A100", 312.0),
                        ("A800", 312.0), ("L40S", 362.1), ("B200", 2250.0))
LENGTH_QUANTUM = 16  # the smallest frame (tokens) of a mixed pack


def register(which) -> None:
    s = which.add_parser("step", help="one training step against diffusers' Wan at equal size",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", default="configs/models/tiny.yaml",
                   help="model preset or training config YAML (default configs/models/tiny.yaml)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="model overrides, e.g. --set depth=2 --set compile=true")
    s.add_argument("--tokens", type=int, default=8192, help="tokens in the pack (default 8192)")
    s.add_argument("--samples", type=int, default=4, help="samples in the pack (default 4)")
    s.add_argument("--mix", choices=("equal", "mixed"), default="equal",
                   help="sample lengths: equal, or mixed (seeded, 1/4 to 7/4 of the mean)")
    s.add_argument("--lengths", help="comma-separated sample lengths (overrides the three above)")
    s.add_argument("--text-tokens", type=int, default=64, help="caption tokens per sample")
    s.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    s.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="fp32, or bf16 autocast (GPU only); default bf16 on a GPU, fp32 on a CPU")
    s.add_argument("--repeats", type=int, default=5, help="timed steps per system (median)")
    s.add_argument("--warmup", type=int, default=2, help="untimed steps per system first")
    s.add_argument("--peer", choices=("wan", "none"), default="wan")
    s.add_argument("--peer-compile", action="store_true",
                   help="compile the peer's blocks too (diffusers' compile_repeated_blocks)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="also write the results to this file")
    s.set_defaults(func=run_step)


# ---------------------------------------------------------------------------------------------
# The pack


def frame_tokens(mean: int) -> int:
    """Tokens per frame of a mixed pack: the largest power of two up to an eighth of the mean
    sample length (at least LENGTH_QUANTUM, at most 1024), so a sample has several frames."""
    f = LENGTH_QUANTUM
    while f * 2 <= min(1024, mean // 8):
        f *= 2
    return f


def sample_lengths(tokens: int, samples: int, mix: str, seed: int) -> list[int]:
    """Lengths summing to `tokens`: equal (the remainder spread one each), or mixed (seeded
    weights from 1/4 to 7/4, whole frames of `frame_tokens` tokens; the last sample takes what
    rounding leaves)."""
    if samples < 1 or tokens < samples:
        raise ValueError(f"--tokens {tokens} cannot hold --samples {samples} (one token each)")
    if mix == "equal":
        base, extra = divmod(tokens, samples)
        return [base + (i < extra) for i in range(samples)]
    frame = frame_tokens(tokens // samples)
    if tokens % frame or tokens < samples * frame:
        raise ValueError(f"--mix mixed: --tokens {tokens} must be a multiple of {frame} (the "
                         f"frame) holding at least one frame per sample; or give --lengths")
    rng = random.Random(seed)
    weights = [rng.uniform(0.25, 1.75) for _ in range(samples)]
    units = tokens // frame
    shares = [max(1, round(units * w / sum(weights))) for w in weights]
    while sum(shares) > units:  # rounding up took too many: shrink the largest
        shares[shares.index(max(shares))] -= 1
    shares[-1] += units - sum(shares)
    return [s * frame for s in shares]


def grid_for(n: int, frame: Optional[int] = None) -> tuple[int, int, int]:
    """A (t, h, w) grid of n patches. With `frame` (dividing n): frames of that many tokens
    (h, w its near-square factors), so samples of a mixed pack differ in duration only and
    pad to the longest exactly (the peer's dense batch). Else near-cubic: t the largest divisor
    up to n^(1/3), h the largest divisor of the rest up to its square root."""
    if frame is not None and n % frame == 0:
        h = max(d for d in range(1, math.isqrt(frame) + 1) if frame % d == 0)
        return n // frame, h, frame // h
    t = max(d for d in range(1, int(round(n ** (1 / 3))) + 1) if n % d == 0)
    rest = n // t
    h = max(d for d in range(1, math.isqrt(rest) + 1) if rest % d == 0)
    return t, h, rest // h


@dataclass
class Pack:
    lengths: list[int]
    grids: list[tuple[int, int, int]]
    latents: list[torch.Tensor]  # (C, T, H, W) per sample, in latent units
    targets: list[torch.Tensor]
    timesteps: torch.Tensor  # (B,)
    text: torch.Tensor  # (B, S, text_dim)


def make_pack(cfg: ModelConfig, lengths: list[int], text_tokens: int, seed: int) -> Pack:
    g = torch.Generator().manual_seed(seed)
    pt, ph, pw = cfg.patch_size
    frame = None if len(set(lengths)) == 1 else frame_tokens(sum(lengths) // len(lengths))
    grids = [grid_for(n, frame) for n in lengths]
    shapes = [(cfg.in_channels, t * pt, h * ph, w * pw) for t, h, w in grids]
    latents = [torch.randn(s, generator=g) for s in shapes]
    targets = [torch.randn(s, generator=g) for s in shapes]
    return Pack(lengths, grids, latents, targets, torch.rand(len(lengths), generator=g),
                torch.randn(len(lengths), text_tokens, cfg.text_dim, generator=g))


# ---------------------------------------------------------------------------------------------
# The systems


@dataclass
class System:
    name: str
    model: torch.nn.Module
    loss: Callable[[], torch.Tensor]
    note: str = ""
    times: dict[str, list[float]] = field(default_factory=lambda: {
        "forward": [], "backward": [], "optimizer": []})


def ours(cfg: ModelConfig, pack: Pack, device: torch.device) -> System:
    from megagoku.data.packing import pack as pack_samples
    from megagoku.models import build_model

    model = build_model(cfg, device=device)
    batch = pack_samples(pack.latents, [""] * len(pack.lengths), ["video"] * len(pack.lengths),
                         cfg.patch_size).to(device)
    target = pack_samples(pack.targets, [""] * len(pack.lengths), ["video"] * len(pack.lengths),
                          cfg.patch_size).tokens.to(device)
    text = pack.text.reshape(-1, cfg.text_dim).to(device)
    text_cu = torch.arange(len(pack.lengths) + 1, dtype=torch.int32) * pack.text.shape[1]
    timesteps = pack.timesteps.to(device)

    def loss() -> torch.Tensor:
        out = model(batch.tokens, timesteps, batch.positions, batch.cu_seqlens, text,
                    text_cu.to(device))
        return (out.float() - target.float()).pow(2).mean()

    from megagoku.models.attention import resolve_backend
    from megagoku.ops import describe

    what = f"attention {resolve_backend(cfg.attention_backend, device)}, " \
        f"{describe(cfg.kernels, device.type)}" + (", blocks compiled" if cfg.compile else "")
    return System("megagoku", model, loss, what)


def peer(cfg: ModelConfig, pack: Pack, device: torch.device, compile_blocks: bool) -> System:
    from megagoku.tools.bench_peer import build_peer, peer_batch, peer_loss

    model = build_peer(cfg, device)
    if compile_blocks:
        model.compile_repeated_blocks()
    batch = peer_batch(pack.latents, pack.targets, pack.timesteps, pack.text, device)
    note = "padded to the longest sample" if batch.padded else "dense batch"
    return System("diffusers Wan", model, lambda: peer_loss(model, batch),
                  note + (", blocks compiled" if compile_blocks else ""))


def timed_step(system: System, update, device: torch.device, dtype: torch.dtype,
               record: bool) -> None:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    sync()
    t0 = time.perf_counter()
    with autocast:
        loss = system.loss()
    sync()
    t1 = time.perf_counter()
    update.backward(loss)
    sync()
    t2 = time.perf_counter()
    update.step()
    update.finish()
    sync()
    t3 = time.perf_counter()
    if not math.isfinite(float(loss.detach())):
        raise RuntimeError(f"{system.name}: the loss is not finite")
    if record:
        for phase, seconds in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
            system.times[phase].append(seconds)


# ---------------------------------------------------------------------------------------------
# The peak


def cpu_matmul_rate(size: int = 2048, tries: int = 3) -> float:
    """The best fp32 FLOP/s of `tries` (size x size) @ (size x size) products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    best = math.inf
    for _ in range(tries):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def gpu_matmul_rate(device: torch.device, size: int = 8192, tries: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    torch.mm(a, b)
    best = math.inf
    for _ in range(tries):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def known_gpu_peak(name: str) -> Optional[float]:
    for key, tflops in GPU_BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Row:
    system: str
    note: str
    tokens_per_s: float
    tokens_per_s_min: float
    tokens_per_s_max: float
    step_s: float
    forward_s: float
    backward_s: float
    optimizer_s: float
    tflops: float
    mfu: float


def summarise(system: System, tokens: int, flops: float, peak: float) -> Row:
    t = system.times
    steps = [f + b + o for f, b, o in zip(t["forward"], t["backward"], t["optimizer"])]
    step = statistics.median(steps)
    return Row(system.name, system.note, tokens / step, tokens / max(steps), tokens / min(steps),
               step, statistics.median(t["forward"]), statistics.median(t["backward"]),
               statistics.median(t["optimizer"]), flops / step / 1e12, flops / step / peak)


def resolve(args: argparse.Namespace) -> tuple[ModelConfig, list[int], torch.device, torch.dtype]:
    cfg = load_model_config(args.config, args.overrides)
    if args.lengths:
        try:
            lengths = [int(x) for x in args.lengths.split(",")]
        except ValueError:
            raise ValueError(f"--lengths: comma-separated integers, got {args.lengths!r}") from None
        if any(n < 1 for n in lengths):
            raise ValueError(f"--lengths: every sample needs a token, got {args.lengths!r}")
    else:
        lengths = sample_lengths(args.tokens, args.samples, args.mix, args.seed)
    if args.text_tokens < 1 or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--text-tokens and --repeats must be positive, --warmup not negative")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no GPU")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if dtype != torch.float32 and device.type != "cuda":
        # megatron's linear layers run their backward under CUDA autocast only.
        raise ValueError("--dtype bf16 runs on a GPU only (megatron's layers have no CPU autocast "
                         "backward)")
    return cfg, lengths, device, dtype


def run_step(args: argparse.Namespace) -> int:
    from megagoku.models.flops import pack_train_flops
    from megagoku.optim import Update, adamw
    from megagoku.parallel import ensure_single_process_groups

    try:
        cfg, lengths, device, dtype = resolve(args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ensure_single_process_groups()
    torch.manual_seed(args.seed)
    pack = make_pack(cfg, lengths, args.text_tokens, args.seed)
    systems = [ours(cfg, pack, device)]
    if args.peer == "wan":
        systems.append(peer(cfg, pack, device, args.peer_compile))
    updates = [Update(s.model, adamw(s.model.parameters(), lr=1e-4), grad_clip=1.0,
                      use_deepspeed=False) for s in systems]
    tokens = sum(lengths)
    flops = pack_train_flops(cfg, lengths, [args.text_tokens] * len(lengths))
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
        peak = known_gpu_peak(where)
        measured = [gpu_matmul_rate(device)]
        if peak is None:
            peak = measured[0]
            peak_note = f"no known peak for {where}: the measured bf16 GEMM rate"
        else:
            peak_note = f"known dense bf16 peak of {where}"
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        measured = [cpu_matmul_rate()]
        peak_note = "best fp32 GEMM (2048^3) measured in this run"
    grid_text = ", ".join(f"{n}={t}x{h}x{w}" for n, (t, h, w) in zip(lengths, pack.grids))
    print(f"device: {where}; dtype {'fp32' if dtype == torch.float32 else 'bf16 autocast'}")
    print(f"model: {cfg.name}, depth {cfg.depth}, width {cfg.hidden_size}, {cfg.num_heads} heads, "
          f"MLP {int(cfg.hidden_size * cfg.mlp_ratio)}, caption width {cfg.text_dim}")
    print(f"pack: {len(lengths)} samples, {tokens} tokens ({grid_text}), {args.text_tokens} caption "
          f"tokens each; {flops / 1e12:.3f} TFLOP per step (forward + backward)")
    for s in systems:
        params = sum(p.numel() for p in s.model.parameters())
        print(f"{s.name}: {params / 1e6:.2f}M parameters ({s.note})", flush=True)
    for system, update in zip(systems, updates):
        for _ in range(args.warmup):
            timed_step(system, update, device, dtype, record=False)
    for r in range(args.repeats):
        order = list(zip(systems, updates))
        for system, update in (order if r % 2 == 0 else order[::-1]):
            timed_step(system, update, device, dtype, record=True)
        if device.type == "cpu":
            measured.append(cpu_matmul_rate())
        last = {s.name: tokens / sum(s.times[p][-1] for p in s.times) for s in systems}
        print(f"[{r + 1}/{args.repeats}] " + ", ".join(f"{k} {v:.0f} tokens/s"
                                                      for k, v in last.items()), flush=True)
    peak = max(measured) if device.type == "cpu" else peak
    rows = [summarise(s, tokens, flops, peak) for s in systems]
    print(f"peak: {peak / 1e12:.3f} TFLOP/s ({peak_note}; measured "
          f"{min(measured) / 1e12:.3f}-{max(measured) / 1e12:.3f} over {len(measured)} tries)")
    print(f"{'system':<16}{'tokens/s':>10}{'(min-max)':>16}{'step s':>9}{'fwd s':>8}{'bwd s':>8}"
          f"{'opt s':>8}{'TFLOP/s':>9}{'MFU':>7}")
    for r in rows:
        spread = f"{r.tokens_per_s_min:.0f}-{r.tokens_per_s_max:.0f}"
        print(f"{r.system:<16}{r.tokens_per_s:>10.0f}{spread:>16}{r.step_s:>9.3f}"
              f"{r.forward_s:>8.3f}{r.backward_s:>8.3f}{r.optimizer_s:>8.3f}{r.tflops:>9.3f}"
              f"{r.mfu:>7.1%}")
    ratio = None
    if len(rows) == 2:
        ratio = rows[0].tokens_per_s / rows[1].tokens_per_s
        a, b = systems[0].times, systems[1].times
        per_round = [sum(b[p][i] for p in b) / sum(a[p][i] for p in a)
                     for i in range(args.repeats)]
        print(f"ours / peer: {ratio:.2f}x tokens/s (per round {min(per_round):.2f}-"
              f"{max(per_round):.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "dtype": str(dtype), "config": args.config,
                       "overrides": args.overrides, "lengths": lengths, "grids": pack.grids,
                       "text_tokens": args.text_tokens, "flops": flops, "peak_flops": peak,
                       "peak_note": peak_note, "measured_peaks": measured,
                       "repeats": args.repeats, "rows": [asdict(r) for r in rows],
                       "ratio": ratio}, f, indent=2)
    return 0
