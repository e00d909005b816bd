"""Patch n' Pack: latents of any (T, H, W) cut into patches and laid end to end in one sequence.

No buckets: a pack is filled from a window of read-ahead samples, first-fit-decreasing, up to the
token budget (`PackingLoader`); nothing is dropped and nothing inside a pack is padding. The
loader's state (the next unread index and the indices in its window) is saved in every
checkpoint, so a resumed run continues on exactly the packs it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch

from megagoku.data.decode import DecodeStats
from megagoku.data.errors import DataError
from megagoku.data.workers import ReadOptions, SampleReads, StreamDataset
from megagoku.launch import heartbeat


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
    # Caption features per sample when the data carries them (the latent cache); else the trainer
    # encodes `captions`.
    texts: Optional[list[torch.Tensor]] = None

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
                           self.grids, self.captions, self.kinds, self.texts)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Cut a packed (L, ...) tensor back into per-sample pieces."""
        return list(tokens.split(self.tokens_per_sample().tolist()))


def first_frame_tokens(batch: "PackedBatch", patch: Sequence[int], channels: int,
                       keep: Optional[Sequence[bool]] = None) -> torch.Tensor:
    """The I2V condition of a pack, (L, patch_dim): for every token, the patch at its (h, w) of
    its sample's first latent frame broadcast along time (Goku §2.5), patchified like the
    tokens. Zeros for images (nothing to animate) and for samples with keep[i] False (dropped
    for classifier-free guidance)."""
    pieces = []
    for i, (tokens, grid) in enumerate(zip(batch.split(batch.tokens), batch.grids)):
        if batch.kinds[i] != "video" or (keep is not None and not keep[i]):
            pieces.append(torch.zeros_like(tokens))
            continue
        latent = unpatchify(tokens, grid, patch, channels)
        first = latent[:, :1].expand(-1, latent.shape[1], -1, -1)
        pieces.append(patchify(first, patch)[0])
    return torch.cat(pieces)


def pack(latents: Sequence[torch.Tensor], captions: Sequence[str], kinds: Sequence[str],
         patch: Sequence[int], texts: Optional[Sequence[torch.Tensor]] = None) -> PackedBatch:
    tokens, positions, grids, lengths = [], [], [], [0]
    for latent in latents:
        tok, grid = patchify(latent, patch)
        tokens.append(tok)
        positions.append(grid_positions(grid))
        grids.append(grid)
        lengths.append(tok.shape[0])
    cu = torch.tensor(lengths).cumsum(0).to(torch.int32)
    return PackedBatch(torch.cat(tokens), torch.cat(positions), cu, grids, list(captions),
                       list(kinds), None if texts is None else list(texts))


class Sample(Protocol):
    """Pixels to encode, or (from the latent cache) `latent` and `text` features already made."""

    caption: str
    kind: str


class IndexedDataset(Protocol):
    def __getitem__(self, index: int) -> Optional[Sample]: ...  # None: unreadable, skipped


# This many unreadable samples in a row stop training: a broken mount, not a few bad files.
MAX_CONSECUTIVE_SKIPS = 100


class ConsecutiveSkips:
    """Counts unreadable samples in a row and stops the reader at MAX_CONSECUTIVE_SKIPS with one
    line (a DataError) that says why they were skipped."""

    def __init__(self):
        self.run = 0

    def read(self) -> None:
        self.run = 0

    def skipped(self, index: int, stats: Optional[DecodeStats] = None) -> None:
        self.run += 1
        if self.run >= MAX_CONSECUTIVE_SKIPS:
            why = ""
            if stats is not None and stats.skipped:
                why = " (skipped so far: " + ", ".join(
                    f"{n} {reason}" for reason, n in stats.skipped.most_common()) + ")"
            raise DataError(f"data: {self.run} samples in a row could not be read (up to index "
                            f"{index}){why}: the data is broken, not a few files; the warnings "
                            "above name each file")


def first_fit_decreasing(sizes: Sequence[int], room: int) -> list[int]:
    """Positions of `sizes` to add to a pack with `room` tokens left: largest first, each one that
    still fits (ties by position, so the choice is deterministic)."""
    chosen = []
    for position in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        if sizes[position] <= room:
            chosen.append(position)
            room -= sizes[position]
    return chosen


@dataclass
class _Entry:
    index: int  # in this replica's stream
    latent: torch.Tensor
    sample: Sample
    tokens: int


class PackingLoader:
    """Turns an indexable dataset into packs of at most `tokens_per_pack` tokens (Patch n' Pack:
    no buckets, no padding inside a pack).

    The loader keeps up to `window` read-ahead samples (encoded) and fills each pack from them
    first-fit-decreasing, refilling the window as samples leave it, until none of them fits.
    `window=1` is greedy in stream order: a pack closes at the first sample that does not fit,
    which opens the next one. `encode` maps a sample's pixels to its latent (the VAE; samples
    from the latent cache carry theirs); a single
    sample larger than the budget is an error, not a silent drop; an index whose sample cannot be
    read (the dataset gives None) is skipped and counted in `skipped`.

    Samples are read through `data/workers.py` (`reading`: worker processes, or this process);
    the packer and the encoder stay here. What the readers counted (files per decoder, skips
    per reason) is summed in `decode_stats`.

    `replica = (r, n)`: data-parallel replica r of n reads samples r, r + n, r + 2n, ... (its own
    stream; indices count in it). State (`state_dict`) is the next unread index and the indices
    in the window; a loader loaded with it yields exactly the packs the original would have (the
    window's samples are read and encoded again: the dataset and the encoder are deterministic;
    samples the workers had read beyond the window are read again too).
    """

    def __init__(self, dataset: IndexedDataset, encode: Callable[[torch.Tensor], torch.Tensor],
                 patch: Sequence[int], tokens_per_pack: int, start_index: int = 0,
                 replica: tuple[int, int] = (0, 1), window: int = 1,
                 reading: Optional[ReadOptions] = None,
                 progress: Optional[Callable[[str], None]] = None):
        if not 0 <= replica[0] < replica[1]:
            raise ValueError(f"replica {replica[0]} of {replica[1]} does not exist")
        if window < 1:
            raise ValueError(f"data.pack_window must be at least 1, got {window}")
        self.replica = replica
        self.dataset = dataset
        self.encode = encode
        self.patch = tuple(patch)
        self.tokens_per_pack = tokens_per_pack
        self.window = window
        self.next_index = start_index  # the next index of the stream not read yet
        self.skipped = 0  # indices whose sample could not be read, in this process
        self.decode_stats = DecodeStats()  # what the readers counted, wherever they ran
        self._buffer: list[_Entry] = []  # read and encoded, not packed yet (stream order)
        self._rereads: list[int] = []  # a loaded window, to be read again before new indices
        self._reads = SampleReads(StreamDataset(dataset, replica), reading or ReadOptions(),
                                  progress)
        self._reads.restart([], start_index)

    @property
    def progress(self) -> Optional[Callable[[str], None]]:
        """Called with "data" while a wait for the data workers lasts (not set by the trainer:
        a launcher's heartbeat is a sample arriving, in `_fill`)."""
        return self._reads.progress

    @progress.setter
    def progress(self, report: Optional[Callable[[str], None]]) -> None:
        self._reads.progress = report

    def state_dict(self) -> dict:
        return {"next_index": self.next_index,
                "window": [*self._rereads, *(e.index for e in self._buffer)]}

    def load_state_dict(self, state: dict) -> None:
        self.next_index = int(state["next_index"])
        self._buffer = []
        self._rereads = [int(i) for i in state.get("window", [])]
        self._reads.restart(self._rereads, self.next_index)

    def close(self) -> None:
        """Stop the data workers."""
        self._reads.close()

    def _entry(self, index: int, sample: Optional[Sample]) -> Optional[_Entry]:
        if sample is None:  # a file that could not be decoded (the reader said so and counted)
            return None
        latent = getattr(sample, "latent", None)
        if latent is None:
            latent = self.encode(sample.pixels)
        n = patchify(latent, self.patch)[0].shape[0]
        if n > self.tokens_per_pack:
            raise ValueError(f"sample {index} ({sample.caption!r}) has {n} tokens, more than "
                             f"data.tokens_per_step = {self.tokens_per_pack}")
        return _Entry(index, latent, sample, n)

    def _fill(self) -> None:
        skips = ConsecutiveSkips()
        while self._rereads or len(self._buffer) < self.window:
            fetched = self._reads.next()
            heartbeat.progress("data")  # a sample read (or skipped): the loader is not stuck
            if fetched.stats is not None:
                self.decode_stats.add(fetched.stats)
            if self._rereads:  # the saved window first (it was readable when it was saved)
                self._rereads.pop(0)
            else:
                self.next_index += 1
            entry = self._entry(fetched.index, fetched.sample)
            if entry is not None:
                self._buffer.append(entry)
                skips.read()
                continue
            self.skipped += 1
            skips.skipped(fetched.index, self.decode_stats)

    def next_pack(self) -> PackedBatch:
        chosen: list[_Entry] = []
        room = self.tokens_per_pack
        while True:
            self._fill()
            taken = first_fit_decreasing([e.tokens for e in self._buffer], room)
            if not taken:
                break
            for position in taken:
                chosen.append(self._buffer[position])
                room -= self._buffer[position].tokens
            self._buffer = [e for i, e in enumerate(self._buffer) if i not in set(taken)]
        chosen.sort(key=lambda e: e.index)
        texts = [getattr(e.sample, "text", None) for e in chosen]
        return pack([e.latent for e in chosen], [e.sample.caption for e in chosen],
                    [e.sample.kind for e in chosen], self.patch,
                    None if any(t is None for t in texts) else texts)

    def __iter__(self) -> Iterator[PackedBatch]:
        while True:
            yield self.next_pack()


def reshard_loader_states(states: Sequence[dict], replicas: int) -> list[dict]:
    """Loader states saved by `len(states)` data-parallel replicas -> states for `replicas`.

    Same count: the states unchanged, and the resumed run yields exactly the packs the
    uninterrupted one would have. Another count cannot reproduce the batches (a pack is filled
    from one replica's own stream, and the streams interleave differently), so the guarantee is
    about samples: in the global stream (replica r of n reads r, r + n, ...) let G be the first
    index some old replica had not packed yet. Every sample before G was trained on exactly once;
    the new replicas read on from G, so nothing is skipped, and the only repeats are the samples
    after G that an old replica had already packed (its read-ahead: at most a few packs each).
    """
    old = len(states)
    if replicas < 1 or old < 1:
        raise ValueError(f"cannot reshard loader states from {old} to {replicas} replicas")
    if old == replicas:
        return [dict(s) for s in states]
    frontier = min(min([int(s["next_index"]), *map(int, s.get("window", []))]) * old + r
                   for r, s in enumerate(states))
    return [{"next_index": max(0, -(-(frontier - r) // replicas)), "window": []}
            for r in range(replicas)]
