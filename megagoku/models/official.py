"""Goku's released weight layout and ours: the names and shapes of the `Block` in goku/model.py of
Saiyan-World/goku, and the exact (bit-for-bit) map between them and GokuTransformer's blocks.

Per block N, released name <- ours:

    blocks.N.norm1.linear.{weight,bias}    <- blocks.N.adaln.{weight,bias}   (6 x dim rows: shift,
                                              scale, gate of attention, then of the MLP; same order)
    blocks.N.attn1.{q,k,v}_proj.weight     <- blocks.N.attn.qkv.weight       (ours per head:
                                              [head][q, k, v][head_dim] rows; theirs one matrix each)
    blocks.N.attn1.o_proj.weight           <- blocks.N.attn.proj.weight
    blocks.N.attn1.{q,k}_norm.weight       <- blocks.N.attn.{q,k}_norm.weight  (heads x head_dim)
    blocks.N.norm2.weight                  <- blocks.N.norm2.weight
    blocks.N.attn2.q_proj.weight           <- blocks.N.cross_attn.q.weight
    blocks.N.attn2.{k,v}_proj.weight       <- blocks.N.cross_attn.kv.weight  ([head][k, v][head_dim])
    blocks.N.attn2.o_proj.weight           <- blocks.N.cross_attn.proj.weight
    blocks.N.attn2.{q,k}_norm.weight       <- blocks.N.cross_attn.{q,k}_norm.weight
    blocks.N.norm3.weight                  <- blocks.N.norm3.weight
    blocks.N.mlp.fc{1,2}.{weight,bias}     <- blocks.N.mlp.fc{1,2}.{weight,bias}

The released block has no bias on its attention projections (attention_bias=False), nor have
ours. norm1's LayerNorm has no parameters. Everything outside the blocks (patch embedding,
timestep embedder, caption norm, final layer, image-to-video input) is ours and keeps our names:
the released file defines none of it. Only the released block has this layout
(`ModelConfig.released_block`); the earlier megagoku block's per-head Q/K gains have no place in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from megagoku.config.schema import ModelConfig

OFFICIAL_FORMAT = "goku-official"

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")

# Our block tensor -> the released one, where it is a plain rename.
_RENAMES = {
    "adaln.weight": "norm1.linear.weight",
    "adaln.bias": "norm1.linear.bias",
    "attn.proj.weight": "attn1.o_proj.weight",
    "attn.q_norm.weight": "attn1.q_norm.weight",
    "attn.k_norm.weight": "attn1.k_norm.weight",
    "norm2.weight": "norm2.weight",
    "cross_attn.q.weight": "attn2.q_proj.weight",
    "cross_attn.proj.weight": "attn2.o_proj.weight",
    "cross_attn.q_norm.weight": "attn2.q_norm.weight",
    "cross_attn.k_norm.weight": "attn2.k_norm.weight",
    "norm3.weight": "norm3.weight",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
# Our fused per-head projections -> the released separate ones, in the order of their parts.
_SPLITS = {
    "attn.qkv.weight": ("attn1.q_proj.weight", "attn1.k_proj.weight", "attn1.v_proj.weight"),
    "cross_attn.kv.weight": ("attn2.k_proj.weight", "attn2.v_proj.weight"),
}


class LayoutError(ValueError):
    """Weights that do not fit the official layout of this model config."""


@dataclass(frozen=True)
class OfficialTensor:
    """One tensor of the official layout: its name, its shape, and where it comes from in ours
    (`ours`, whole, or part `part` of `parts` of each head's rows)."""

    name: str
    shape: tuple[int, ...]
    ours: str
    part: int = 0
    parts: int = 1


def check_released(cfg: ModelConfig, where: str) -> None:
    if not cfg.released_block:
        raise LayoutError(
            f"{where}: the official layout holds Goku's released block; this model has "
            f"attn_norm={cfg.attn_norm}, qk_norm={cfg.qk_norm}, mlp_norm_gain={cfg.mlp_norm_gain}, "
            f"modulation_fp32={cfg.modulation_fp32} (the earlier megagoku block)")


def official_tensors(ours: dict[str, tuple[int, ...]], cfg: ModelConfig) -> list[OfficialTensor]:
    """The official layout of a model whose tensors (our names -> shapes) are `ours`."""
    check_released(cfg, "goku-official")
    heads, head_dim = cfg.num_heads, cfg.head_dim
    out = []
    for name, shape in sorted(ours.items()):
        match = _BLOCK.fullmatch(name)
        local = match.group(2) if match else None
        if local in _SPLITS:
            targets = _SPLITS[local]
            rows = heads * len(targets) * head_dim
            if shape[0] != rows:
                raise LayoutError(f"{name}: {list(shape)} does not hold {len(targets)} parts of "
                                  f"{heads} heads of {head_dim}")
            for i, target in enumerate(targets):
                out.append(OfficialTensor(f"blocks.{match.group(1)}.{target}",
                                          (heads * head_dim, *shape[1:]), name, i, len(targets)))
        elif local in _RENAMES:
            out.append(OfficialTensor(f"blocks.{match.group(1)}.{_RENAMES[local]}", tuple(shape),
                                      name))
        elif match:
            raise LayoutError(f"{name}: not a tensor of Goku's released block")
        else:
            out.append(OfficialTensor(name, tuple(shape), name))  # ours, outside the blocks
    return out


def to_official(tensor: torch.Tensor, entry: OfficialTensor, cfg: ModelConfig) -> torch.Tensor:
    """The official tensor `entry` from our tensor `entry.ours`."""
    if entry.parts == 1:
        return tensor
    per_head = tensor.reshape(cfg.num_heads, entry.parts, cfg.head_dim, *tensor.shape[1:])
    return per_head[:, entry.part].reshape(entry.shape).contiguous()


def _reverse() -> dict[str, tuple[str, int, int]]:
    """Released block tensor -> (our block tensor, part, parts)."""
    out = {official: (ours, 0, 1) for ours, official in _RENAMES.items()}
    for ours, targets in _SPLITS.items():
        out.update({official: (ours, i, len(targets)) for i, official in enumerate(targets)})
    return out


_FROM_OFFICIAL = _reverse()


def our_sources(official_names: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Our tensor name -> the official tensors it is made of, as (name, part), parts in order;
    for the names of an official-layout file. Raises LayoutError for a block tensor the released
    block does not have, or a fused projection with a part missing."""
    out: dict[str, list[tuple[str, int]]] = {}
    counts: dict[str, int] = {}
    for name in sorted(official_names):
        match = _BLOCK.fullmatch(name)
        if match is None:
            out[name] = [(name, 0)]  # ours, outside the blocks
            continue
        if match.group(2) not in _FROM_OFFICIAL:
            raise LayoutError(f"{name}: not a tensor of Goku's released block")
        ours, part, parts = _FROM_OFFICIAL[match.group(2)]
        ours = f"blocks.{match.group(1)}.{ours}"
        out.setdefault(ours, []).append((name, part))
        counts[ours] = parts
    for ours, pieces in out.items():
        pieces.sort(key=lambda piece: piece[1])
        if [part for _, part in pieces] != list(range(counts.get(ours, 1))):
            raise LayoutError(f"{ours}: the official layout needs {counts[ours]} parts "
                              f"({', '.join(_SPLITS[_BLOCK.fullmatch(ours).group(2)])}), "
                              f"found {[name for name, _ in pieces]}")
    return out


def from_official(read: Callable[[str], torch.Tensor], sources: list[tuple[str, int]],
                  cfg: ModelConfig) -> torch.Tensor:
    """One of our tensors from its official `sources` (`our_sources`), read by name."""
    pieces = [read(name) for name, _ in sources]
    if len(pieces) == 1:
        return pieces[0]
    rows = cfg.num_heads * cfg.head_dim
    for (name, _), piece in zip(sources, pieces):
        if piece.shape[0] != rows:
            raise LayoutError(f"{name}: {list(piece.shape)} does not hold {cfg.num_heads} heads "
                              f"of {cfg.head_dim}")
    rest = pieces[0].shape[1:]
    per_head = [p.reshape(cfg.num_heads, cfg.head_dim, *rest) for p in pieces]
    return torch.stack(per_head, dim=1).reshape(len(pieces) * rows, *rest)
