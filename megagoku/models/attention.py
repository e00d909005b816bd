"""Attention over packed (Patch n' Pack) sequences: self-attention never crosses samples, and
each sample's tokens cross-attend only to their own caption.

Backends, all computing the same block-diagonal attention:
- `flash`: flash-attn's varlen kernel (GPU, fp16/bf16; fp32 inputs are computed in bf16),
  selected by `auto` on CUDA tensors when flash-attn is installed.
- `sdpa_segments`: one SDPA call per sample on its contiguous slice of the pack (views, no
  copies in; the outputs concatenated): sum_i n_i^2 work, no mask, no padding. The CPU default.
- `sdpa_padded`: gathers each sample into a padded (samples, longest, heads, dim) batch and runs
  SDPA with a key-padding mask: sum_i n_i * n_max work instead of L^2, plus the gather of q, k and
  v and the scatter of the output (an `index_put` backward).
- `sdpa_blockmask`: one SDPA call over the whole pack with an (L_q, L_k) block-diagonal mask.
  Quadratic in the pack length; kept as the plainest statement of the semantics.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from megagoku.models.norms import RMSNorm, WholeWidthRMSNorm
from megagoku.ops import KernelChoice, Rope3D
from megagoku.parallel import ColumnParallelLinear, RowParallelLinear, heads_to_seq, seq_to_heads
from megagoku.parallel import layout as process_layout


@cache
def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@dataclass
class SeqLayout:
    """Where each sample sits in a packed sequence, with the index tensors the backends need."""

    cu_seqlens: torch.Tensor  # (B + 1,) int32 offsets
    max_len: int
    segment: torch.Tensor  # (L,) sample index of every token
    pad_index: torch.Tensor  # (B, max_len) token index of each padded slot (clamped)
    pad_valid: torch.Tensor  # (B, max_len) True where the slot holds a real token
    offsets: tuple[int, ...]  # cu_seqlens as Python ints: the slices of `sdpa_segments`

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, allow_empty: bool = False) -> "SeqLayout":
        """`allow_empty`: samples may have no tokens here (queries of a Ulysses slice that
        holds none of a sample's tokens); keys always need at least one."""
        cu = cu_seqlens.to(torch.int64)
        lengths = cu[1:] - cu[:-1]
        if bool((lengths < 0).any()) or (not allow_empty and bool((lengths == 0).any())):
            raise ValueError(f"every packed sample needs at least one token, got lengths "
                             f"{lengths.tolist()}")
        max_len = max(1, int(lengths.max()))
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)
        slots = torch.arange(max_len, device=cu.device)
        pad_valid = slots[None, :] < lengths[:, None]
        pad_index = torch.minimum(cu[:-1, None] + slots[None, :], cu[1:, None] - 1).clamp(min=0)
        return cls(cu_seqlens.to(torch.int32), max_len, segment, pad_index, pad_valid,
                   tuple(cu.tolist()))

    @property
    def num_samples(self) -> int:
        return self.cu_seqlens.numel() - 1


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        if device.type == "cuda":
            return "flash" if _flash_attn_varlen() is not None else "sdpa_padded"
        return "sdpa_segments"
    if backend == "flash" and (_flash_attn_varlen() is None or device.type != "cuda"):
        raise RuntimeError("attention_backend 'flash' needs the flash-attn package and CUDA "
                           f"tensors (got {device.type} tensors)")
    return backend


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     q_layout: SeqLayout, k_layout: SeqLayout, backend: str) -> torch.Tensor:
    """q (Lq, H, D), k and v (Lk, H, D): sample i of q attends to sample i of k only."""
    backend = resolve_backend(backend, q.device)
    if backend == "flash":
        dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        out = _flash_attn_varlen()(
            q.to(dtype), k.to(dtype), v.to(dtype), q_layout.cu_seqlens, k_layout.cu_seqlens,
            q_layout.max_len, k_layout.max_len)
        return out.to(q.dtype)
    if backend == "sdpa_segments":
        return _segment_attention(q, k, v, q_layout.offsets, k_layout.offsets)
    if backend == "sdpa_padded":
        qp = q[q_layout.pad_index].transpose(1, 2)  # (B, H, Nq, D)
        kp = k[k_layout.pad_index].transpose(1, 2)
        vp = v[k_layout.pad_index].transpose(1, 2)
        mask = k_layout.pad_valid[:, None, None, :]  # (B, 1, 1, Nk)
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)
        return out.transpose(1, 2)[q_layout.pad_valid]
    if backend == "sdpa_blockmask":
        mask = q_layout.segment[:, None] == k_layout.segment[None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            attn_mask=mask[None, None])
        return out[0].transpose(0, 1)
    raise ValueError(f"unknown attention backend {backend!r}")


def exclude_from_compile() -> None:
    """Leave `varlen_attention` out of torch.compile's graphs from now on (its per-sample loop
    would otherwise specialise a graph to every pack's lengths): `compile_blocks` calls this
    before compiling. Not a decorator because `torch.compiler.disable` imports dynamo (0.4 s per
    process on these CPUs), which only a compiled run needs; the attention modules look the
    function up by name at each call, so they call the excluded one from then on."""
    global varlen_attention, _excluded_from_compile
    if not _excluded_from_compile:
        varlen_attention = torch.compiler.disable(varlen_attention)
        _excluded_from_compile = True


_excluded_from_compile = False


def _segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       q_offsets: tuple[int, ...], k_offsets: tuple[int, ...]) -> torch.Tensor:
    """SDPA over each sample's own slice: the slices are views of q, k and v (samples are
    contiguous in a pack), so the only copy is joining the outputs, whose backward is slicing.
    A sample with no queries here (a Ulysses slice) contributes nothing."""
    outs = []
    for i in range(len(q_offsets) - 1):
        qa, qb, ka, kb = q_offsets[i], q_offsets[i + 1], k_offsets[i], k_offsets[i + 1]
        if qb == qa:
            continue
        # 4-D (1, heads, tokens, dim): with 3-D inputs torch's CPU SDPA takes its unfused math
        # path (bmm, softmax, masks of -inf rows), about twice the time of its flash kernel.
        out = F.scaled_dot_product_attention(q[None, qa:qb].transpose(1, 2),
                                             k[None, ka:kb].transpose(1, 2),
                                             v[None, ka:kb].transpose(1, 2))
        outs.append(out[0].transpose(0, 1))
    if not outs:
        return q.new_empty(q.shape[:-1] + (v.shape[-1],))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def qk_norm(kind: str, num_heads: int, head_dim: int, tp_size: int, eps: float,
            kernels: KernelChoice) -> nn.Module:
    """The norm of Q or K, (tokens, local heads, head_dim) -> the same shape, a new tensor.

    "whole_width" (Goku's released block): one RMSNorm over all heads of a token, a
    heads x head_dim gain split over TP with the heads. "per_head" (the earlier megagoku block):
    each head normalised alone, one head_dim gain shared by all heads; each TP rank holds only
    some heads, so its gradient is summed over the group."""
    if kind == "whole_width":
        return WholeWidthRMSNorm(num_heads, head_dim, tp_size, eps, kernels)
    if kind == "per_head":
        return RMSNorm(head_dim, eps, grad_over_tp=tp_size > 1, kernels=kernels)
    raise ValueError(f"unknown qk_norm {kind!r} (whole_width, per_head)")


class SelfAttention(nn.Module):
    """Full self-attention with RMSNorm on Q and K (`qk_norm`) and 3D RoPE, heads split over TP.

    The fused QKV projection is laid out per head ([head][q, k, v][head_dim], megatron's
    interleaving), so concatenating the tensor-parallel shards gives the same model at every size.
    Under Ulysses the rank holds a slice of the tokens: Q, K and V are normed and rotated there,
    then an all-to-all gives every rank all tokens for a share of the heads, and back.
    """

    def __init__(self, dim: int, num_heads: int, tp_size: int, mp_config, eps: float,
                 backend: str, init_method, kernels: KernelChoice = "auto",
                 qk_norm_kind: str = "whole_width"):
        super().__init__()
        self.head_dim = dim // num_heads
        self.local_heads = num_heads // tp_size
        self.backend = backend
        self.qkv = ColumnParallelLinear(dim, 3 * dim, config=mp_config, init_method=init_method,
                                        bias=False, gather_output=False)
        self.q_norm = qk_norm(qk_norm_kind, num_heads, self.head_dim, tp_size, eps, kernels)
        self.k_norm = qk_norm(qk_norm_kind, num_heads, self.head_dim, tp_size, eps, kernels)
        self.proj = RowParallelLinear(dim, dim, config=mp_config, init_method=init_method,
                                      bias=False, input_is_parallel=True, skip_bias_add=False)

    def forward(self, x: torch.Tensor, rope: Rope3D, layout: SeqLayout) -> torch.Tensor:
        """x: this rank's residual tokens; rope: the rotation of this rank's Ulysses slice;
        layout: the whole (padded) pack."""
        qkv, _ = self.qkv(x)  # megatron SP all-gathers the TP group's tokens here
        n = qkv.shape[0]
        q, k, v = qkv.view(n, self.local_heads, 3, self.head_dim).unbind(2)
        # The norms read Q and K in place inside the QKV output and return fresh tensors, which
        # the fused rotation may then overwrite. Under Ulysses they run here, before the
        # all-to-all: every head of this rank's tokens is at hand, so the whole-width norm stays
        # local (under TP it sums over the TP group's heads).
        q = rope(self.q_norm(q), inplace=True)
        k = rope(self.k_norm(k), inplace=True)
        if process_layout().ulysses > 1:  # one all-to-all for the three (stacking them is a copy)
            q, k, v = seq_to_heads(torch.stack((q, k, v), dim=1)).unbind(1)
        out = varlen_attention(q, k, v, layout, layout, self.backend)
        out = heads_to_seq(out)
        out, _ = self.proj(out.reshape(n, -1))  # megatron SP reduce-scatters back to the shard
        return out


class CrossAttention(nn.Module):
    """Cross-attention from video tokens to their own caption's token features.

    As in Goku's model file the queries may be rotated by their 3D position (keys stay
    unrotated): without it every frame asks the caption the same question, and a prompt
    cannot say where the shape should be in frame 0 versus frame 7.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int, tp_size: int, mp_config,
                 text_mp_config, eps: float, backend: str, rope_queries: bool, init_method,
                 kernels: KernelChoice = "auto", qk_norm_kind: str = "whole_width"):
        super().__init__()
        self.head_dim = dim // num_heads
        self.local_heads = num_heads // tp_size
        self.backend = backend
        self.rope_queries = rope_queries
        self.q = ColumnParallelLinear(dim, dim, config=mp_config, init_method=init_method,
                                      bias=False, gather_output=False)
        # Every TP rank holds all caption tokens: no sequence-parallel gather for the keys.
        self.kv = ColumnParallelLinear(text_dim, 2 * dim, config=text_mp_config,
                                       init_method=init_method, bias=False, gather_output=False)
        self.q_norm = qk_norm(qk_norm_kind, num_heads, self.head_dim, tp_size, eps, kernels)
        self.k_norm = qk_norm(qk_norm_kind, num_heads, self.head_dim, tp_size, eps, kernels)
        self.proj = RowParallelLinear(dim, dim, config=mp_config, init_method=init_method,
                                      bias=False, input_is_parallel=True, skip_bias_add=False)

    def forward(self, x: torch.Tensor, text: torch.Tensor, rope: Rope3D,
                layout: SeqLayout, text_layout: SeqLayout) -> torch.Tensor:
        """Queries are this rank's Ulysses slice (`layout` counts its tokens per sample, maybe
        none); every rank holds all captions, so no all-to-all is needed."""
        q, _ = self.q(x)
        kv, _ = self.kv(text)
        q = self.q_norm(q.view(q.shape[0], self.local_heads, self.head_dim))
        k, v = kv.view(text.shape[0], self.local_heads, 2, self.head_dim).unbind(2)
        k = self.k_norm(k)
        if self.rope_queries:
            q = rope(q, inplace=True)
        out = varlen_attention(q, k, v, layout, text_layout, self.backend)
        out, _ = self.proj(out.reshape(q.shape[0], -1))
        return out
