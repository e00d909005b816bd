from collections import Counter

import pytest

from megagoku.config.schema import DataConfig, ResolutionTier
from megagoku.data.order import SampleOrder, target_index

KINDS = ["image"] * 3 + ["video"] * 17


def test_unmixed_order_is_a_fresh_permutation_per_epoch():
    order = SampleOrder(KINDS, None, seed=3)
    epochs = [[order.position(e * 20 + i) for i in range(20)] for e in range(3)]
    assert all(sorted(e) == list(range(20)) for e in epochs)
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_mixing_ratio_holds_in_every_window_and_each_stream_cycles(fraction):
    order = SampleOrder(KINDS, fraction, seed=0)
    positions = [order.position(i) for i in range(600)]
    kinds = [KINDS[p] for p in positions]
    for start in range(0, 600, 50):  # every window of 50 holds 50 f images, up to one
        assert abs(kinds[start:start + 50].count("image") - 50 * fraction) <= 1
    images = [p for p in positions if KINDS[p] == "image"]
    for cycle in range(len(images) // 3):  # each image once per pass over the images
        assert sorted(images[3 * cycle:3 * cycle + 3]) == [0, 1, 2]


def test_order_is_random_access_and_seeded():
    a, b = SampleOrder(KINDS, 0.4, seed=1), SampleOrder(KINDS, 0.4, seed=1)
    forward = [a.position(i) for i in range(200)]
    assert [b.position(i) for i in reversed(range(200))][::-1] == forward
    assert forward != [SampleOrder(KINDS, 0.4, seed=2).position(i) for i in range(200)]


def test_a_ratio_the_data_cannot_serve_is_refused():
    with pytest.raises(ValueError, match="data.image_fraction: 0.5 asks for images, but m.jsonl"):
        SampleOrder(["video"] * 4, 0.5, 0, "m.jsonl")
    SampleOrder(["video"] * 4, 0.0, 0)  # no images wanted: fine


def test_tiers_are_drawn_by_weight_once_per_record():
    cfg = DataConfig(kind="manifest", manifest="m", tiers=[
        ResolutionTier("video", 16, 16, 5, 3.0), ResolutionTier("video", 32, 32, 9, 1.0),
        ResolutionTier("image", 64, 64, 1, 1.0)])
    drawn = Counter(target_index(cfg, "video", p) for p in range(4000))
    assert abs(drawn[0] / 4000 - 0.75) < 0.03
    assert [target_index(cfg, "video", p) for p in range(50)] == \
        [target_index(cfg, "video", p) for p in range(50)]
    assert {target_index(cfg, "image", p) for p in range(50)} == {0}
