"""`megagoku bench kernels`: the fused RMSNorm, whole-width Q/K RMSNorm, modulated norm and 3D
RoPE kernels against eager PyTorch.

Each case times forward + backward through autograd, eager (the reference ops of megagoku.ops)
and fused (the csrc/ kernels), on the shapes Goku trains with: hidden states of Goku-2B (1792) and
Goku-8B (3072), per-head Q norms (head dim 64, rows strided inside a fused QKV output, as the
earlier megagoku block has them), Goku's whole-width Q norm (all heads of a token together, read
in place in the same QKV output), the released block's float32 modulated norms (LayerNorm before
self-attention, RMSNorm with gain before the MLP; one shift and scale row per sample of a pack of
16) and gated residuals (x + gate * out, one gate row per sample), and RoPE over a packed
sequence of mixed (T, H, W) grids. It prints both times, their
ratio, and the fused kernels' achieved bandwidth against the machine's copy bandwidth, measured in
the same run (`dst.copy_(src)` of a 256 MiB buffer, bytes read + written; measured between cases, each case
held against the better of its two neighbours, since a shared machine's bandwidth drifts).

Bytes counted are the least any implementation must move: the norms read x and write y forward,
read dy and x and write dx backward (5 passes over the activations); the gated residual reads x
and out and writes y forward, reads dy and out and writes dout backward (6 passes; dx is dy);
RoPE reads and writes once each way (4 passes).

On glibc CPUs the run raises malloc's mmap threshold first: otherwise every output larger than
32 MiB is a fresh mmap whose first touch page-faults (measured here: 20 ms for 58 MB, more than
the kernel itself), for the eager and the fused path alike. A GPU's caching allocator does the
same by default; `--cold-allocator` keeps glibc's default.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from megagoku.config import ModelConfig
from megagoku.tools import bench_checkpoint, bench_data, bench_memory, bench_step

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_SPEEDUP = 2.0
TARGET_COPY_FRACTION = {"cpu": 0.5, "cuda": 0.8}
# (T, H, W) latent grids packed into the RoPE case: an image, clips of several lengths.
PACKED_GRIDS = ((1, 32, 32), (8, 16, 28), (4, 24, 24), (16, 16, 16), (1, 64, 40))


@dataclass
class Result:
    case: str
    dtype: str
    shape: str
    eager_ms: float
    fused_ms: float
    speedup: float
    fused_gbps: float
    copy_gbps: float  # the better of the copies measured just before and just after this case
    copy_fraction: float


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: kernels, data, packing, checkpoint, step",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_subparsers(dest="bench", required=True)
    k = which.add_parser("kernels", help="fused norms, modulation and 3D RoPE, forward + backward",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--tokens", type=int, default=16384, help="tokens per call (default 16384)")
    k.add_argument("--dtype", action="append", choices=sorted(DTYPES),
                   help="repeatable; default fp32 and bf16 (and fp16 on CUDA)")
    k.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    k.add_argument("--repeats", type=int, default=10, help="timed repeats per case (median)")
    k.add_argument("--cold-allocator", action="store_true",
                   help="keep glibc's mmap threshold (outputs page-fault on every call)")
    k.add_argument("--json", help="also write the results to this file")
    k.set_defaults(func=run_kernels)
    bench_data.register(which)
    pk = which.add_parser("packing", help="Patch n' Pack padding against size bucketing",
                          description=run_packing.__doc__)
    pk.add_argument("--samples", type=int, default=3000, help="samples in the mix (default 3000)")
    pk.add_argument("--budget", type=int, default=220_000, help="tokens per pack (default 220000)")
    pk.add_argument("--window", type=int, action="append",
                    help="pack windows to compare (repeatable; default 1, 16, 64, 256)")
    pk.add_argument("--seed", type=int, default=0)
    pk.set_defaults(func=run_packing)
    bench_checkpoint.register(which)
    bench_step.register(which)
    bench_memory.register(which)


class Timer:
    """Median wall time of a callable, synchronising the GPU around each call."""

    def __init__(self, device: torch.device, repeats: int, warmup: int = 2):
        self.device, self.repeats, self.warmup = device, repeats, warmup

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def copy_bandwidth(device: torch.device, timer: Timer) -> float:
    """Bytes read + written per second by a 256 MiB device-to-device copy."""
    src = torch.empty(64 * 1024 * 1024, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / timer(lambda: dst.copy_(src))


def raise_mmap_threshold() -> bool:
    """Let glibc's heap keep and reuse large blocks (see the module docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    one_gib = ctypes.c_int(1 << 30)
    return bool(libc.mallopt(m_mmap_threshold, one_gib)) and bool(
        libc.mallopt(m_trim_threshold, one_gib))


def packed_positions(tokens: int, device: torch.device) -> torch.Tensor:
    """(t, h, w) positions of PACKED_GRIDS repeated until `tokens`, each sample from 0."""
    parts, total = [], 0
    while total < tokens:
        for t, h, w in PACKED_GRIDS:
            grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                              indexing="ij"), dim=-1).reshape(-1, 3)
            parts.append(grid)
            total += grid.shape[0]
    return torch.cat(parts)[:tokens].to(device)


def fwd_bwd(fn: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...],
            grad: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(fn(), inputs, grad)


def rms_norm_case(ops, tokens: int, dim: int, heads: int, dtype, device, timer):
    """Hidden-state RMSNorm (heads == 0), or the per-head Q norm as SelfAttention has it: the Q
    slice of a fused QKV output, rows 3 * dim elements apart (no copy on the fused path)."""
    gen = torch.Generator(device=device).manual_seed(0)
    if heads:
        qkv = torch.randn(tokens, heads, 3, dim, dtype=dtype, device=device, generator=gen)
        x = qkv.requires_grad_()[:, :, 0]
    else:
        x = torch.randn(tokens, dim, dtype=dtype, device=device, generator=gen).requires_grad_()
    weight = torch.randn(dim, device=device, generator=gen).requires_grad_()
    dy = torch.randn(x.shape, dtype=dtype, device=device, generator=gen)
    times = {kernels: timer(fwd_bwd(lambda: ops.rms_norm(x, weight, 1e-6, kernels), (x, weight), dy))
             for kernels in ("reference", "fused")}
    rows = x.numel() // dim
    return times, 5 * x.numel() * x.element_size() + 2 * rows * 4


def whole_width_case(ops, tokens: int, dim: int, heads: int, dtype, device, timer):
    """Goku's Q norm as SelfAttention has it: the Q slice of a fused QKV output, all heads of a
    token normalised together (a heads x head_dim gain)."""
    gen = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(tokens, heads, 3, dim, dtype=dtype, device=device, generator=gen)
    x = qkv.requires_grad_()[:, :, 0]
    weight = torch.randn(heads * dim, device=device, generator=gen).requires_grad_()
    dy = torch.randn(x.shape, dtype=dtype, device=device, generator=gen)
    times = {kernels: timer(fwd_bwd(lambda: ops.whole_width_rms_norm(x, weight, 1e-6,
                                                                     kernels=kernels),
                                    (x, weight), dy))
             for kernels in ("reference", "fused")}
    return times, 5 * x.numel() * x.element_size() + 2 * tokens * 4


ADALN_SAMPLES = 16


def modulated_case(ops, tokens: int, dim: int, kind: str, dtype, device, timer):
    """The released block's norm + float32 modulation: a pack of ADALN_SAMPLES samples, one shift
    and scale row each (chunks of the adaLN output, as the block has them)."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, dim, dtype=dtype, device=device, generator=gen).requires_grad_()
    mod = torch.randn(ADALN_SAMPLES, 6 * dim, device=device, generator=gen).requires_grad_()
    shift, scale = mod[:, :dim], mod[:, dim:2 * dim]
    weight = torch.randn(dim, device=device, generator=gen).requires_grad_() if kind == "rms" \
        else None
    segment = torch.arange(tokens, device=device) * ADALN_SAMPLES // tokens
    dy = torch.randn(x.shape, dtype=dtype, device=device, generator=gen)
    inputs = (x, mod) + ((weight,) if weight is not None else ())
    times = {kernels: timer(fwd_bwd(lambda: ops.modulated_norm(x, kind, weight, 1e-6, shift, scale,
                                                               segment, kernels), inputs, dy))
             for kernels in ("reference", "fused")}
    return times, 5 * x.numel() * x.element_size() + 3 * tokens * 4


def gate_case(ops, tokens: int, dim: int, dtype, device, timer):
    """The released block's gated residual x + gate * out (float32 product), a pack of
    ADALN_SAMPLES samples, one gate row each."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, dim, dtype=dtype, device=device, generator=gen).requires_grad_()
    out = torch.randn(tokens, dim, dtype=dtype, device=device, generator=gen).requires_grad_()
    mod = torch.randn(ADALN_SAMPLES, 6 * dim, device=device, generator=gen).requires_grad_()
    gate = mod[:, 2 * dim:3 * dim]
    segment = torch.arange(tokens, device=device) * ADALN_SAMPLES // tokens
    dy = torch.randn(x.shape, dtype=dtype, device=device, generator=gen)
    times = {kernels: timer(fwd_bwd(lambda: ops.gated_residual(x, gate, out, segment, kernels),
                                    (x, out, mod), dy))
             for kernels in ("reference", "fused")}
    return times, 6 * x.numel() * x.element_size()


def rope_case(ops, tokens: int, heads: int, head_dim: int, dtype, device, timer):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, heads, head_dim, dtype=dtype, device=device,
                    generator=gen).requires_grad_()
    dy = torch.randn(x.shape, dtype=dtype, device=device, generator=gen)
    positions = packed_positions(tokens, device)
    split = ModelConfig(hidden_size=heads * head_dim, num_heads=heads).resolved_rope_split()
    # As the model does: one Rope3D per forward, built from the pack's positions.
    times = {kernels: timer(fwd_bwd(lambda: ops.Rope3D(positions, split, 10000.0, kernels)(x),
                                    (x,), dy))
             for kernels in ("reference", "fused")}
    return times, 4 * x.numel() * x.element_size()


# Goku-2B (dim 1792, 28 heads of 64) and Goku-8B (3072, 48 heads of 64).
CASES = [("rmsnorm", dict(dim=1792, heads=0)), ("rmsnorm", dict(dim=3072, heads=0)),
         ("qk-rmsnorm", dict(dim=64, heads=28)), ("qk-rmsnorm", dict(dim=64, heads=48)),
         ("qk-whole", dict(dim=64, heads=28)), ("qk-whole", dict(dim=64, heads=48)),
         ("adaln-layer", dict(dim=1792)), ("adaln-layer", dict(dim=3072)),
         ("adaln-rms", dict(dim=1792)), ("adaln-rms", dict(dim=3072)),
         ("gate", dict(dim=1792)), ("gate", dict(dim=3072)),
         ("rope", dict(heads=28, head_dim=64)), ("rope", dict(heads=48, head_dim=64))]


def run_case(ops, name: str, kw: dict, tokens: int, dtype, device, timer):
    """-> (shape label, {"reference": s, "fused": s}, bytes the fused path must move)."""
    if name == "rope":
        times, moved = rope_case(ops, tokens, kw["heads"], kw["head_dim"], dtype, device, timer)
        return f"{tokens}x{kw['heads']}x{kw['head_dim']}", times, moved
    if name == "qk-whole":
        times, moved = whole_width_case(ops, tokens, kw["dim"], kw["heads"], dtype, device, timer)
        return f"{tokens}x{kw['heads']}x{kw['dim']}", times, moved
    if name == "gate":
        times, moved = gate_case(ops, tokens, kw["dim"], dtype, device, timer)
        return f"{tokens}x{kw['dim']}", times, moved
    if name.startswith("adaln-"):
        times, moved = modulated_case(ops, tokens, kw["dim"], name.removeprefix("adaln-"), dtype,
                                      device, timer)
        return f"{tokens}x{kw['dim']}", times, moved
    times, moved = rms_norm_case(ops, tokens, kw["dim"], kw["heads"], dtype, device, timer)
    shape = f"{tokens}x{kw['heads']}x{kw['dim']}" if kw["heads"] else f"{tokens}x{kw['dim']}"
    return shape, times, moved


def run_kernels(args: argparse.Namespace) -> int:
    from megagoku import ops
    from megagoku.ops import fused

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    try:
        ops.use_fused("fused", device.type)
    except ops.KernelsUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dtypes = args.dtype or (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"])
    if device.type != "cuda" and "fp16" in dtypes:
        print("fp16 runs on CUDA only; dropped")
        dtypes = [d for d in dtypes if d != "fp16"]
    warm = device.type == "cpu" and not args.cold_allocator and raise_mmap_threshold()
    timer = Timer(device, args.repeats)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                  f"CPU ISA {fused.cpu_isa()}")
    # A shared machine's memory bandwidth drifts (here 25-45 GB/s within a minute): copy is
    # measured between cases, and each case is held against the better of its two neighbours.
    copies = [copy_bandwidth(device, timer)]
    print(f"device: {where}; allocator: {'warm (mmap threshold raised)' if warm else 'default'}")
    print(f"{args.tokens} tokens per call; forward + backward, median of {args.repeats}; "
          f"copy bandwidth now {copies[0] / 1e9:.1f} GB/s (read + write)")
    measured = []
    total = len(dtypes) * len(CASES)
    for dtype_name in dtypes:
        for name, kw in CASES:
            shape, times, moved = run_case(ops, name, kw, args.tokens, DTYPES[dtype_name], device,
                                           timer)
            copies.append(copy_bandwidth(device, timer))
            measured.append((name, dtype_name, shape, times, moved))
            print(f"[{len(measured)}/{total}] {name} {dtype_name} {shape}: eager "
                  f"{times['reference'] * 1e3:.1f} ms, fused {times['fused'] * 1e3:.1f} ms "
                  f"(copy now {copies[-1] / 1e9:.1f} GB/s)", flush=True)
    results = []
    for i, (name, dtype_name, shape, t, moved) in enumerate(measured):
        copy_bw = max(copies[i], copies[i + 1])
        fused_bw = moved / t["fused"]
        results.append(Result(name, dtype_name, shape, t["reference"] * 1e3, t["fused"] * 1e3,
                              t["reference"] / t["fused"], fused_bw / 1e9, copy_bw / 1e9,
                              fused_bw / copy_bw))
    print(f"copy bandwidth: {min(copies) / 1e9:.1f}-{max(copies) / 1e9:.1f} GB/s over "
          f"{len(copies)} measurements; each case against the better of its neighbours")
    print(f"{'case':<12}{'dtype':<6}{'shape':<16}{'eager ms':>10}{'fused ms':>10}{'speedup':>9}"
          f"{'fused GB/s':>12}{'copy GB/s':>11}{'of copy':>9}")
    for r in results:
        print(f"{r.case:<12}{r.dtype:<6}{r.shape:<16}{r.eager_ms:>10.2f}{r.fused_ms:>10.2f}"
              f"{r.speedup:>8.1f}x{r.fused_gbps:>12.1f}{r.copy_gbps:>11.1f}{r.copy_fraction:>8.0%}")
    target = TARGET_COPY_FRACTION.get(device.type, 0.5)
    met = sum(r.speedup >= TARGET_SPEEDUP and r.copy_fraction >= target for r in results)
    print(f"targets (fused >= {TARGET_SPEEDUP:.0f}x eager and >= {target:.0%} of copy bandwidth): "
          f"met by {met} of {len(results)} cases")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "copy_gbps_measured": [c / 1e9 for c in copies],
                       "tokens": args.tokens,
                       "results": [asdict(r) for r in results]}, f, indent=2)
    return 0


# A stage-2-like mix: images at several sizes, clips of 2-10 s at 288p/480p/720p and 24 fps.
IMAGE_SIZES = ((256, 256), (512, 512), (1024, 1024), (432, 768), (720, 1280), (768, 432))
VIDEO_TIERS = ((288, 512), (480, 848), (720, 1280))


def latent_tokens(frames: int, height: int, width: int) -> int:
    """Tokens of a clip through the 3D causal VAE (8x8 spatial, 4x temporal: the first frame
    alone) and Goku's 1x2x2 patches."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def realistic_mix(samples: int, seed: int) -> list[tuple[str, int, int]]:
    """(bucket, tokens, bucket's padded tokens): half images, half clips; clips bucketed by tier
    and 2 s duration bins as a bucketing loader would (each padded to its bin's longest)."""
    import random

    rng = random.Random(seed)
    mix = []
    for _ in range(samples):
        if rng.random() < 0.5:
            h, w = rng.choice(IMAGE_SIZES)
            tokens = latent_tokens(1, h, w)
            mix.append((f"image {h}x{w}", tokens, tokens))
        else:
            h, w = rng.choice(VIDEO_TIERS)
            seconds = rng.uniform(2.0, 10.0)
            frames = int(seconds * 24) // 4 * 4 + 1  # 4k + 1 frames
            top = min(10, 2 * (int(seconds) // 2 + 1))  # bin [b-2, b) seconds, padded to b
            mix.append((f"{h}p {top}s", latent_tokens(frames, h, w),
                        latent_tokens(top * 24 // 4 * 4 + 1, h, w)))
    return mix


class TokenCounts:
    """A dataset whose sample i is a latent of exactly `tokens[i]` tokens (1 channel, 1x1x1
    patches), so that the packing loader itself can be measured without decoding."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def __getitem__(self, index: int):
        from types import SimpleNamespace

        n = self.tokens[index % len(self.tokens)]
        return SimpleNamespace(pixels=torch.zeros(1, n, 1, 1), caption="", kind="video")


def bucketed_padding(mix: list[tuple[str, int, int]], budget: int) -> float:
    """Size bucketing on the same mix: each bucket's batches hold floor(budget / padded tokens)
    samples padded to the bucket's size; the last batch of a bucket is partly empty."""
    from collections import defaultdict

    buckets: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for bucket, tokens, padded in mix:
        buckets[bucket].append((tokens, padded))
    real = sum(tokens for _, tokens, _ in mix)
    batches = sum(math.ceil(len(items) / max(1, budget // items[0][1]))
                  for items in buckets.values())
    return 1 - real / (batches * budget)


def run_packing(args: argparse.Namespace) -> int:
    """`megagoku bench packing`: the share of each pack's token budget left empty (padding) by
    the Patch n' Pack loader at several window sizes, and by size bucketing, on a realistic mix
    (half images at six sizes, half 2-10 s clips at 288p/480p/720p, through the 8x8x4 VAE and
    1x2x2 patches); and the loader's own throughput (no decoding or encoding in it)."""
    from megagoku.data.packing import PackingLoader

    if args.samples < 1 or args.budget < 1 or any(w < 1 for w in args.window or []):
        print("error: --samples, --budget and --window must be positive", file=sys.stderr)
        return 2
    mix = realistic_mix(args.samples, args.seed)
    tokens = [t for _, t, _ in mix]
    if max(tokens) > args.budget:
        print(f"error: --budget {args.budget} is smaller than the largest sample ({max(tokens)})",
              file=sys.stderr)
        return 2
    total = sum(tokens)
    print(f"{len(mix)} samples, {total / 1e6:.1f}M tokens (largest {max(tokens)}), "
          f"budget {args.budget} tokens per pack")
    print(f"{'method':<28}{'padding':>10}{'packed tokens/s':>18}")
    for window in args.window or [1, 16, 64, 256]:
        loader = PackingLoader(TokenCounts(tokens), lambda x: x, (1, 1, 1), args.budget,
                               window=window)
        used, packs = 0, 0
        start = time.perf_counter()
        # Until one pass over the mix has been read (the stream wraps around).
        while loader.next_index < len(tokens):
            used += loader.next_pack().tokens.shape[0]
            packs += 1
        seconds = time.perf_counter() - start
        name = "greedy (window 1)" if window == 1 else f"first-fit-decreasing w={window}"
        print(f"{name:<28}{1 - used / (packs * args.budget):>10.2%}{used / seconds:>18.3g}",
              flush=True)
    print(f"{'size bucketing':<28}{bucketed_padding(mix, args.budget):>10.2%}{'n/a':>18}")
    return 0
