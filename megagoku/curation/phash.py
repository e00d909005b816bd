"""Perceptual hashes for near-duplicate removal: the classic 64-bit pHash.

Scraped corpora hold the same clip many times over (re-uploads, re-encodes, other resolutions,
small colour changes). Such copies share their coarse structure, which the lowest frequencies of
a DCT capture and compression or resizing barely change: the hash is the sign pattern of those
frequencies around their median, and copies land within a few bits of each other in Hamming
distance while unrelated images differ in about half of the 64.

The recipe is imagehash.phash's (hash_size 8, highfreq_factor 4):
    grayscale (ITU-R 601 luma) -> 32x32 -> orthonormal 2D DCT-II -> top-left 8x8 block ->
    bit = coefficient > median -> 64 bits, row-major, the (0, 0) coefficient's bit the MSB.
Three small differences, so the hashes are not bit-identical to imagehash's (do not mix the
two in one index): the 32x32 resize averages areas (OpenCV INTER_AREA) where imagehash uses
Pillow's Lanczos; the DCT is orthonormal where imagehash's scipy DCT leaves the first row and
column sqrt(2) larger relative to the rest; and the median is taken over the 63 AC
coefficients, without the DC term. DC is the mean brightness times 32, far above every other
value, so including it (as imagehash does) only shifts the median by half a rank; leaving it out
makes the threshold depend on structure alone. The DC bit is kept for the classic 64-bit layout
and is 1 for practically every frame that is not black.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import cv2
import numpy as np

from megagoku.curation.media import check_frame

Frames = Union[np.ndarray, Sequence[np.ndarray]]
HASH_BITS = 64
_SIZE, _LOW = 32, 8


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix D (n, n): D @ x is the DCT of x, and D @ D.T = I."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


_DCT = dct_matrix(_SIZE)
_WEIGHTS = 1 << np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64)


def _hash_luma(luma: np.ndarray) -> int:
    small = cv2.resize(luma.astype(np.float32), (_SIZE, _SIZE), interpolation=cv2.INTER_AREA)
    low = (_DCT @ small.astype(np.float64) @ _DCT.T)[:_LOW, :_LOW].ravel()
    bits = low > np.median(low[1:])
    return int((bits.astype(np.uint64) * _WEIGHTS).sum())


def _luma(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def phash(frame: np.ndarray) -> int:
    """The 64-bit perceptual hash of one uint8 RGB frame (H, W, 3), as a Python int."""
    return _hash_luma(_luma(check_frame(frame, "phash")))


def clip_phash(frames: Frames, keyframes: int = 5) -> int:
    """The hash of a clip: pHash of the per-pixel mean of `keyframes` evenly spaced frames
    (the centres of equal segments; all frames when there are fewer).

    The mean rather than the middle frame (keyframes=1 gives that): it summarises the whole
    clip, so two clips that only share the shot around their middle do not collide, and one
    scene cut does not decide the hash on its own: a copy trimmed a few frames differently
    moves each keyframe a little instead of moving the one frame across the cut."""
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"clip_phash needs frames (T, H, W, 3); got shape {frames.shape}")
    if len(frames) == 0:
        raise ValueError("clip_phash needs at least one frame; got none")
    if isinstance(keyframes, bool) or not isinstance(keyframes, int) or keyframes < 1:
        raise ValueError(f"clip_phash needs keyframes >= 1; got {keyframes!r}")
    # The centres of `keyframes` equal segments: keyframes=1 is the middle frame.
    k = min(keyframes, len(frames))
    chosen = [check_frame(frames[(2 * j + 1) * len(frames) // (2 * k)], "phash")
              for j in range(k)]
    if any(f.shape != chosen[0].shape for f in chosen):
        raise ValueError("clip_phash needs frames of one size; got "
                         f"{sorted({f.shape for f in chosen})}")
    return _hash_luma(np.mean([_luma(f) for f in chosen], axis=0))


def _check_hash(h) -> int:
    if isinstance(h, (bool, np.bool_)) or not isinstance(h, (int, np.integer)) \
            or not 0 <= int(h) < 1 << HASH_BITS:
        raise ValueError(f"a pHash is an int in [0, 2**64); got {h!r}")
    return int(h)


def hamming(a: int, b: int) -> int:
    """The number of bits in which two 64-bit hashes differ."""
    return (_check_hash(a) ^ _check_hash(b)).bit_count()


def near_duplicates(items: Sequence[tuple[int, float]], max_distance: int) -> list[int]:
    """Indices (ascending) of the items to KEEP from (hash, score) pairs: visit them by score,
    highest first (ties: the earlier index first), and keep one unless its hash lies within
    `max_distance` bits of a hash already kept. So of each group of copies the best-scoring one
    stays, and an item is never dropped for resembling an item that was itself dropped.

    Lookups use the pigeonhole principle rather than a scan of everything kept: cut the 64 bits
    into max_distance + 1 bands; two hashes at most max_distance apart differ in at most
    max_distance bands, so they agree exactly on at least one, and only items sharing a band
    value need the full comparison."""
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) \
            or max_distance < 0:
        raise ValueError(f"max_distance must be an int >= 0; got {max_distance!r}")
    hashes, scores = [], []
    for i, item in enumerate(items):
        try:
            h, score = item
        except (TypeError, ValueError):
            raise ValueError(f"near_duplicates needs (hash, score) pairs; item {i} is "
                             f"{item!r}") from None
        hashes.append(_check_hash(h))
        if not isinstance(score, (int, float, np.integer, np.floating)) or math.isnan(score):
            raise ValueError(f"near_duplicates needs a real score; item {i} has {score!r}")
        scores.append(float(score))
    if not hashes:
        return []
    if max_distance >= HASH_BITS:
        return [min(range(len(hashes)), key=lambda i: (-scores[i], i))]

    bands = max_distance + 1
    edges = [round(j * HASH_BITS / bands) for j in range(bands + 1)]
    masks = [((1 << (hi - lo)) - 1) << lo for lo, hi in zip(edges[:-1], edges[1:])]
    index: list[dict[int, list[int]]] = [{} for _ in masks]  # band value -> kept hashes
    kept = []
    for i in sorted(range(len(hashes)), key=lambda i: (-scores[i], i)):
        h = hashes[i]
        keys = [h & m for m in masks]
        if any((h ^ g).bit_count() <= max_distance
               for band, key in zip(index, keys) for g in band.get(key, ())):
            continue
        kept.append(i)
        for band, key in zip(index, keys):
            band.setdefault(key, []).append(h)
    return sorted(kept)
