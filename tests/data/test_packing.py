import json

from types import SimpleNamespace

import pytest
import torch

from megagoku.config import DataConfig
from megagoku.data import PackingLoader, ShapesDataset, pack, patchify, unpatchify
from megagoku.data.packing import grid_positions, reshard_loader_states


def test_patchify_round_trip_and_positions():
    latent = torch.randn(3, 4, 6, 8)
    tokens, grid = patchify(latent, (2, 2, 4))
    assert grid == (2, 3, 2) and tokens.shape == (12, 3 * 2 * 2 * 4)
    torch.testing.assert_close(unpatchify(tokens, grid, (2, 2, 4), 3), latent)
    # Token i holds the patch at grid_positions(grid)[i].
    for i, (t, h, w) in enumerate(grid_positions(grid).tolist()):
        patch = latent[:, 2 * t:2 * t + 2, 2 * h:2 * h + 2, 4 * w:4 * w + 4]
        torch.testing.assert_close(tokens[i], patch.reshape(-1))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(3, 3, 6, 8), (2, 2, 4))


def test_pack_lays_samples_end_to_end_with_positions_from_zero():
    latents = [torch.randn(3, 2, 4, 4), torch.randn(3, 1, 2, 6)]
    batch = pack(latents, ["v", "i"], ["video", "image"], (1, 2, 2))
    assert batch.cu_seqlens.tolist() == [0, 8, 11]
    assert batch.segment.tolist() == [0] * 8 + [1] * 3
    assert batch.positions[8].tolist() == [0, 0, 0] and batch.positions[10].tolist() == [0, 0, 2]
    for piece, latent, grid in zip(batch.split(batch.tokens), latents, batch.grids):
        torch.testing.assert_close(unpatchify(piece, grid, (1, 2, 2), 3), latent)


def loader(start=0, budget=300):
    ds = ShapesDataset(DataConfig(image_fraction=0.5))
    return PackingLoader(ds, lambda x: x, (1, 4, 4), budget, start_index=start)


def test_packs_respect_the_budget_and_drop_nothing():
    ld = loader()
    seen = []
    for _ in range(6):
        batch = ld.next_pack()
        assert batch.tokens.shape[0] <= 300
        seen += batch.captions
    ds = ShapesDataset(DataConfig(image_fraction=0.5))
    assert seen == [ds[i].caption for i in range(len(seen))]  # window 1: stream order
    # The sample that did not fit is read and waits in the window.
    assert ld.state_dict() == {"next_index": len(seen) + 1, "window": [len(seen)]}


def test_loader_resumes_on_the_exact_next_pack():
    a = loader()
    for _ in range(3):
        a.next_pack()
    b = loader()
    b.load_state_dict(a.state_dict())
    pa, pb = a.next_pack(), b.next_pack()
    assert pa.captions == pb.captions and torch.equal(pa.tokens, pb.tokens)


def test_sample_larger_than_budget_is_an_error():
    ld = loader(budget=64)  # images (16 tokens) fit, videos (128 tokens) do not
    with pytest.raises(ValueError, match="more than data.tokens_per_step"):
        for _ in range(20):
            ld.next_pack()


class WithHoles:
    """The shapes set with unreadable samples at some indices (a dataset gives None for those)."""

    def __init__(self, holes):
        self.shapes = ShapesDataset(DataConfig(image_fraction=0.5))
        self.holes = set(holes)

    def __getitem__(self, index):
        return None if index in self.holes else self.shapes[index]


def test_unreadable_samples_are_skipped_and_counted():
    ld = PackingLoader(WithHoles({1, 2, 7}), lambda x: x, (1, 4, 4), 300)
    seen = []
    while ld.next_index < 12:
        seen += ld.next_pack().captions
    waiting = ld.state_dict()["window"]
    expected = [ld.dataset.shapes[i].caption for i in range(ld.next_index)
                if i not in {1, 2, 7} and i not in waiting]
    assert seen == expected and ld.skipped == 3


def test_a_run_of_unreadable_samples_stops_the_loader():
    ld = PackingLoader(WithHoles(range(5, 500)), lambda x: x, (1, 4, 4), 300)
    with pytest.raises(RuntimeError, match="100 samples in a row could not be read"):
        for _ in range(50):
            ld.next_pack()


def test_window_packs_first_fit_decreasing_and_drops_nothing():
    from megagoku.data.packing import first_fit_decreasing

    assert first_fit_decreasing([5, 9, 3, 9, 1], 20) == [1, 3, 4]  # 9, 9, then 1 (5, 3 too big)
    assert first_fit_decreasing([4, 4], 3) == []
    ds = ShapesDataset(DataConfig(image_fraction=0.5))
    greedy = PackingLoader(ds, lambda x: x, (1, 4, 4), 300)
    windowed = PackingLoader(ds, lambda x: x, (1, 4, 4), 300, window=16)
    used = {"greedy": [], "windowed": []}
    seen = []
    for _ in range(20):
        used["greedy"].append(greedy.next_pack().tokens.shape[0])
        batch = windowed.next_pack()
        used["windowed"].append(batch.tokens.shape[0])
        seen += batch.captions
    assert max(used["windowed"]) <= 300
    assert sum(used["windowed"]) / 20 > sum(used["greedy"]) / 20  # fuller packs
    # Every sample read is packed once or still waits in the window.
    state = windowed.state_dict()
    read = [ds[i].caption for i in range(state["next_index"]) if i not in state["window"]]
    assert sorted(seen) == sorted(read) and len(seen) == len(read)


def test_windowed_loader_resumes_exactly():
    ds = ShapesDataset(DataConfig(image_fraction=0.5))
    a = PackingLoader(ds, lambda x: x, (1, 4, 4), 300, window=8)
    for _ in range(5):
        a.next_pack()
    b = PackingLoader(ds, lambda x: x, (1, 4, 4), 300, window=8)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # as a checkpoint stores it
    for _ in range(5):
        pa, pb = a.next_pack(), b.next_pack()
        assert pa.captions == pb.captions and torch.equal(pa.tokens, pb.tokens)


class Indexed:
    """Sample i: a latent of `sizes[i % len(sizes)]` tokens whose caption is its global index."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __getitem__(self, index):
        n = self.sizes[index % len(self.sizes)]
        return SimpleNamespace(pixels=torch.full((1, 1, 1, n), float(index)), caption=str(index),
                               kind="video")


def packed_indices(loaders, packs):
    out = []
    for ld in loaders:
        for _ in range(packs):
            out += [int(c) for c in ld.next_pack().captions]
    return out


@pytest.mark.parametrize("new_size", [1, 2, 3, 4])
def test_resharded_loader_states_skip_nothing_and_repeat_only_read_ahead(new_size):
    """Two replicas train a while (window 4, so each holds read-ahead samples), their states are
    resharded to `new_size` replicas: every global index before the frontier was packed exactly
    once, the new replicas start at the frontier, and nothing is ever skipped."""
    data = Indexed([5, 9, 3, 7, 2, 8, 6])

    def make(replica, n):
        return PackingLoader(data, lambda x: x, (1, 1, 1), 20, replica=(replica, n), window=4)

    old = [make(r, 2) for r in range(2)]
    before = packed_indices(old, 5)
    states = reshard_loader_states([ld.state_dict() for ld in old], new_size)
    new = [make(r, new_size) for r in range(new_size)]
    for ld, state in zip(new, states):
        ld.load_state_dict(state)
    after = packed_indices(new, 6)
    frontier = min(min([s["next_index"], *s["window"]]) * 2 + r
                   for r, s in enumerate(ld.state_dict() for ld in old))
    assert sorted(i for i in before if i < frontier) == list(range(frontier))
    assert min(after) == frontier
    everything = set(before) | set(after)
    assert set(range(max(after) - 3 * new_size * 4)) <= everything  # no hole below the tail
    assert all(i >= frontier for i in set(before) & set(after))  # repeats: read-ahead only


def test_resharding_to_the_same_size_keeps_the_exact_stream():
    data = Indexed([5, 9, 3, 7])
    a = [PackingLoader(data, lambda x: x, (1, 1, 1), 20, replica=(r, 2), window=3)
         for r in range(2)]
    packed_indices(a, 3)
    states = reshard_loader_states([ld.state_dict() for ld in a], 2)
    b = [PackingLoader(data, lambda x: x, (1, 1, 1), 20, replica=(r, 2), window=3)
         for r in range(2)]
    for ld, state in zip(b, states):
        ld.load_state_dict(state)
    assert packed_indices(a, 4) == packed_indices(b, 4)


def test_samples_with_their_own_latent_and_text_are_not_encoded_again():
    sample = SimpleNamespace(latent=torch.randn(2, 1, 2, 2), text=torch.randn(3, 8),
                             caption="c", kind="image")

    def never(_):
        raise AssertionError("encode called for a cached sample")

    batch = PackingLoader([sample] * 4, never, (1, 1, 1), 8).next_pack()
    assert batch.num_samples == 2 and torch.equal(batch.texts[1], sample.text)
    assert batch.to("cpu").texts is batch.texts
