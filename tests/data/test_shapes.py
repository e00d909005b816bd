import torch

from megagoku.config import DataConfig
from megagoku.data import ShapesDataset, describe_video, parse_caption
from megagoku.data.shapes import all_video_captions


def test_samples_are_deterministic_by_seed_and_index():
    a, b = ShapesDataset(DataConfig(seed=1)), ShapesDataset(DataConfig(seed=1))
    assert torch.equal(a[5].pixels, b[5].pixels) and a[5].caption == b[5].caption
    c = ShapesDataset(DataConfig(seed=2))
    assert any(not torch.equal(a[i].pixels, c[i].pixels) for i in range(5))


def test_pixels_match_the_captions():
    """The analyser reads the caption's colour and direction back from every generated clip:
    a generator that moved shapes the wrong way, or an analyser that misread, fails here."""
    ds = ShapesDataset(DataConfig(image_fraction=0.3))
    kinds = set()
    for i in range(120):
        s = ds[i]
        kinds.add(s.kind)
        want, seen = parse_caption(s.caption), describe_video(s.pixels)
        assert seen["colour"] == want["colour"], (i, s.caption, seen)
        if s.kind == "video":
            assert s.pixels.shape == (3, 8, 16, 16) and s.pixels.min() >= -1 and s.pixels.max() <= 1
            assert seen["direction"] == want["direction"], (i, s.caption, seen)
        else:
            assert s.pixels.shape == (3, 1, 16, 16) and want["direction"] is None
    assert kinds == {"video", "image"}


def test_holdout_prompts_never_appear_in_training():
    cfg = DataConfig(image_fraction=0.0)
    held = {f"a {h}" for h in cfg.holdout}
    train = {ShapesDataset(cfg)[i].caption for i in range(400)}
    assert not train & held
    assert len(train) == len(all_video_captions()) - len(held)
    assert {ShapesDataset(cfg, split="holdout")[i].caption for i in range(100)} == held


def test_describe_video_rejects_empty_frames():
    assert describe_video(-torch.ones(3, 4, 8, 8)) == {"colour": None, "direction": None}
