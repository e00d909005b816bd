"""Spatial tiling for the VAE: run a function on overlapping tiles of a (B, C, T, H, W) tensor and
blend the results with linear ramps, so frames of any size fit in memory.

A tile's output near an inner tile edge saw less context than the whole frame would give it; the
ramps hand over from one tile to the next across the overlap so no seam is visible. Each output
pixel is the weight-normalised sum of the tiles covering it (the weights form a partition of
unity), so a function that only looks inside its tile gives exactly the untiled result.
"""

from __future__ import annotations

from typing import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering [0, size), `tile - overlap` apart, the last one
    flush with the end."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Weights along one axis of a tile: rising over `overlap` where another tile precedes it,
    falling where one follows; strictly positive."""
    w = torch.ones(length)
    if overlap > 0:
        up = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if not at_start:
            w[:overlap] = torch.minimum(w[:overlap], up)
        if not at_end:
            w[-overlap:] = torch.minimum(w[-overlap:], up.flip(0))
    return w


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
          scale: float) -> torch.Tensor:
    """fn over overlapping `tile` x `tile` tiles of x's last two dims, blended. `scale` is fn's
    output size per input pixel (1/8 for an encoder, 8 for a decoder); tile, overlap and every
    start must map to whole output pixels."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    ov = round(overlap * scale)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            y = fn(x[..., top:top + tile, left:left + tile])
            if out is None:
                shape = (*y.shape[:-2], round(h * scale), round(w * scale))
                out = torch.zeros(shape, dtype=y.dtype, device=y.device)
                weight = torch.zeros(shape[-2:], dtype=y.dtype, device=y.device)
            th, tw = y.shape[-2:]
            wr = _ramp(th, ov, i == 0, i == len(rows) - 1)
            wc = _ramp(tw, ov, j == 0, j == len(cols) - 1)
            mask = (wr[:, None] * wc[None, :]).to(y)
            oy, ox = round(top * scale), round(left * scale)
            out[..., oy:oy + th, ox:ox + tw] += y * mask
            weight[oy:oy + th, ox:ox + tw] += mask
    return out / weight
