"""Patch n' Pack: latents of any (T, H, W) cut into patches and laid end to end in one sequence.

No buckets: a pack takes samples in order until the next one would exceed the token budget; that
sample opens the next pack (nothing is dropped). The loader's state is one integer (the index of
the next sample), saved in every checkpoint, so a resumed run can continue on exactly the pack it
would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch


def patchify(latent: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """latent (C, T, H, W) -> tokens (T'*H'*W', C*pt*ph*pw) in (t, h, w) order, and the grid."""
    c, t, h, w = latent.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent (T, H, W) = {(t, h, w)} is not divisible by patch {tuple(patch)}")
    grid = (t // pt, h // ph, w // pw)
    x = latent.reshape(c, grid[0], pt, grid[1], ph, grid[2], pw)
    x = x.permute(1, 3, 5, 0, 2, 4, 6)  # T', H', W', C, pt, ph, pw
    return x.reshape(grid[0] * grid[1] * grid[2], c * pt * ph * pw), grid


def unpatchify(tokens: torch.Tensor, grid: Sequence[int], patch: Sequence[int],
               channels: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    gt, gh, gw = grid
    pt, ph, pw = patch
    x = tokens.reshape(gt, gh, gw, channels, pt, ph, pw).permute(3, 0, 4, 1, 5, 2, 6)
    return x.reshape(channels, gt * pt, gh * ph, gw * pw)


def grid_positions(grid: Sequence[int]) -> torch.Tensor:
    """(t, h, w) index of every token of a grid, starting at 0: (N, 3) int64."""
    axes = [torch.arange(n) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


@dataclass
class PackedBatch:
    tokens: torch.Tensor  # (L, patch_dim) clean latent patches
    positions: torch.Tensor  # (L, 3) int64
    cu_seqlens: torch.Tensor  # (B + 1,) int32
    grids: list[tuple[int, int, int]]
    captions: list[str]
    kinds: list[str]

    @property
    def num_samples(self) -> int:
        return len(self.grids)

    @property
    def segment(self) -> torch.Tensor:
        """Sample index of every token, (L,)."""
        return torch.repeat_interleave(
            torch.arange(self.num_samples, device=self.cu_seqlens.device), self.tokens_per_sample())

    def tokens_per_sample(self) -> torch.Tensor:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).to(torch.int64)

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(self.tokens.to(device, non_blocking=True),
                           self.positions.to(device, non_blocking=True),
                           self.cu_seqlens.to(device, non_blocking=True),
                           self.grids, self.captions, self.kinds)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Cut a packed (L, ...) tensor back into per-sample pieces."""
        return list(tokens.split(self.tokens_per_sample().tolist()))


def pack(latents: Sequence[torch.Tensor], captions: Sequence[str], kinds: Sequence[str],
         patch: Sequence[int]) -> PackedBatch:
    tokens, positions, grids, lengths = [], [], [], [0]
    for latent in latents:
        tok, grid = patchify(latent, patch)
        tokens.append(tok)
        positions.append(grid_positions(grid))
        grids.append(grid)
        lengths.append(tok.shape[0])
    cu = torch.tensor(lengths).cumsum(0).to(torch.int32)
    return PackedBatch(torch.cat(tokens), torch.cat(positions), cu, grids, list(captions),
                       list(kinds))


class Sample(Protocol):
    pixels: torch.Tensor
    caption: str
    kind: str


class IndexedDataset(Protocol):
    def __getitem__(self, index: int) -> Optional[Sample]: ...  # None: unreadable, skipped


# More unreadable samples than this in a row stop training: a broken mount, not bad files.
MAX_CONSECUTIVE_SKIPS = 100


class PackingLoader:
    """Turns an indexable dataset into packs of at most `tokens_per_pack` tokens.

    `encode` maps a sample's pixels to its latent (the VAE); a single sample larger than the
    budget is an error, not a silent drop; an index whose sample cannot be read (the dataset gives
    None) is skipped and counted in `skipped`. `replica = (r, n)`: data-parallel replica r of n
    reads samples r, r + n, r + 2n, ... (its own stream; `next_index` counts in it).
    """

    def __init__(self, dataset: IndexedDataset, encode: Callable[[torch.Tensor], torch.Tensor],
                 patch: Sequence[int], tokens_per_pack: int, start_index: int = 0,
                 replica: tuple[int, int] = (0, 1)):
        if not 0 <= replica[0] < replica[1]:
            raise ValueError(f"replica {replica[0]} of {replica[1]} does not exist")
        self.replica = replica
        self.dataset = dataset
        self.encode = encode
        self.patch = tuple(patch)
        self.tokens_per_pack = tokens_per_pack
        self.next_index = start_index
        self.skipped = 0  # indices whose sample could not be read, in this process
        # The sample that did not fit the previous pack, already encoded: it opens the next one.
        self._carry: tuple[int, torch.Tensor, Sample, int] | None = None

    def state_dict(self) -> dict:
        return {"next_index": self.next_index}

    def load_state_dict(self, state: dict) -> None:
        self.next_index = int(state["next_index"])
        self._carry = None

    def _latent(self, index: int) -> Optional[tuple[torch.Tensor, Sample, int]]:
        if self._carry is not None and self._carry[0] == index:
            return self._carry[1:]
        sample = self.dataset[index * self.replica[1] + self.replica[0]]
        if sample is None:  # a file that could not be decoded (the dataset said so and counted)
            return None
        latent = self.encode(sample.pixels)
        n = patchify(latent, self.patch)[0].shape[0]
        if n > self.tokens_per_pack:
            raise ValueError(f"sample {index} ({sample.caption!r}) has {n} tokens, more than "
                             f"data.tokens_per_step = {self.tokens_per_pack}")
        return latent, sample, n

    def next_pack(self) -> PackedBatch:
        latents, captions, kinds, total = [], [], [], 0
        index = self.next_index
        missing = 0
        while True:
            found = self._latent(index)
            if found is None:
                self.skipped += 1
                missing += 1
                if missing >= MAX_CONSECUTIVE_SKIPS:
                    raise RuntimeError(f"{missing} samples in a row could not be read (up to "
                                       f"index {index}): the data is broken, not a few files")
                index += 1
                continue
            missing = 0
            latent, sample, n = found
            if latents and total + n > self.tokens_per_pack:
                self._carry = (index, latent, sample, n)  # this sample opens the next pack
                break
            latents.append(latent)
            captions.append(sample.caption)
            kinds.append(sample.kind)
            total += n
            index += 1
        self.next_index = index
        return pack(latents, captions, kinds, self.patch)

    def __iter__(self) -> Iterator[PackedBatch]:
        while True:
            yield self.next_pack()
