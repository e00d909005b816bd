"""Adherence scores what it claims: real clips of the prompts pass (~100%), noise scores about
chance, and the prompt sets split into seen and held-out captions as the data defines them."""

import pytest
import torch

from megagoku.config import DataConfig
from megagoku.data.shapes import all_video_captions, parse_caption
from megagoku.evaluation.adherence import (image_captions, prompt_set, real_clips, score_clips,
                                           summarise)
from megagoku.evaluation.frechet import frechet_distance
from megagoku.evaluation.classifier import predict

DATA = DataConfig()


def test_prompt_sets_follow_the_holdout():
    held = prompt_set(DATA, "held_out")
    assert [p for p, _ in held] == ["a red square moving up", "a green triangle moving left",
                                    "a blue circle moving down", "a yellow square moving right"]
    seen = prompt_set(DATA, "seen")
    assert len(seen) == 44 and not {p for p, _ in seen} & {p for p, _ in held}
    assert {p for p, _ in prompt_set(DATA, "all")} == set(all_video_captions())
    demo = prompt_set(DATA, "demo")
    assert [s for _, s in demo] == ["held_out"] * 4 + ["seen"] * 4
    with pytest.raises(ValueError, match="prompts: 'some'"):
        prompt_set(DATA, "some")


def test_real_clips_are_the_captions_asked_for():
    captions = ["a red square moving up", "a blue circle moving left"]
    clips = real_clips(captions, 3, DATA, "video", seed=11)
    assert clips.shape == (6, 3, 8, 16, 16)
    assert not torch.equal(clips[0], clips[1])
    images = real_clips(["a green triangle"], 2, DATA, "image", seed=11)
    assert images.shape == (2, 3, 1, 16, 16)
    with pytest.raises(ValueError, match="no real video of 'a purple circle moving up'"):
        real_clips(["a purple circle moving up"], 1, DATA, "video", seed=1)


def test_real_clips_pass_and_noise_scores_about_chance(quick_classifier):
    model, _ = quick_classifier
    pairs = prompt_set(DATA, "all")
    prompts = [p for p, _ in pairs for _ in range(2)]
    splits = [s for _, s in pairs for _ in range(2)]
    real = real_clips([p for p, _ in pairs], 2, DATA, "video")
    records, feats = score_clips(real, prompts, splits, "video", model)
    summary = summarise(records)
    for split in ("held_out", "seen", "all"):
        row = summary[split]
        assert row["pixel_colour"] == 1.0 and row["pixel_direction"] == 1.0, (split, row)
        assert row["classifier_colour"] >= 0.95 and row["classifier_direction"] >= 0.95, row
    assert summary["all"]["classifier_all"] > 0.6 and summary["held_out"]["clips"] == 8

    g = torch.Generator().manual_seed(0)
    noise = torch.rand(real.shape, generator=g) * 2 - 1
    noise_records, noise_feats = score_clips(noise, prompts, splits, "video", model)
    bad = summarise(noise_records)["all"]
    # Balanced prompts: any constant guess is right 1/4 (colour, direction) or 1/3 (shape).
    assert bad["classifier_colour"] < 0.45 and bad["classifier_direction"] < 0.45, bad
    assert bad["pixel_colour"] < 0.45 and bad["pixel_direction"] < 0.45, bad
    assert bad["classifier_all"] < 0.1
    # And the Fréchet distance tells them apart: noise is far, other real clips are near.
    other = real_clips([p for p, _ in pairs], 2, DATA, "video", seed=5)
    _, other_feats = predict(model, other)
    assert frechet_distance(noise_feats, feats) > 10 * frechet_distance(other_feats, feats)


def test_images_are_scored_without_direction(quick_classifier):
    model, _ = quick_classifier
    captions = image_captions()
    assert len(captions) == 12 and parse_caption(captions[0])["direction"] is None
    images = real_clips(captions, 2, DATA, "image")
    prompts = [c for c in captions for _ in range(2)]
    records, _ = score_clips(images, prompts, ["seen"] * len(prompts), "image", model)
    row = summarise(records)["seen"]
    assert "pixel_direction" not in row and "classifier_direction" not in row
    assert row["pixel_colour"] == 1.0 and row["classifier_colour"] >= 0.95
    assert records[0].as_dict()["classifier"].keys() == {"colour", "shape"}
