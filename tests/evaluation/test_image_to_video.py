"""The I2V adherence check scores what it claims: a generator that animates the given frame the
prompt's way scores 100% with no first-frame error; one that ignores frame and prompt does not."""

from types import SimpleNamespace

import torch

from megagoku.config import load_training_config
from megagoku.data.shapes import DIRECTIONS, parse_caption
from megagoku.evaluation.image_to_video import evaluate
from tests.train.test_resume import ROOT

DATA = load_training_config(ROOT / "configs/tiny.yaml").data


def shifted(image, dy, dx):
    """The frame moved by (dy, dx) pixels over a black background (no wrapping round)."""
    out = torch.full_like(image, -1.0)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


class Animator:
    """Moves the given frame half a pixel per frame in the prompt's direction (or, `faithful=False`,
    returns noise that ignores both)."""

    def __init__(self, faithful: bool):
        self.faithful = faithful
        self.config = SimpleNamespace(data=DATA)
        self.model = SimpleNamespace(cond_embed=object())
        self.calls = []

    def generate(self, prompts, frames, height, width, steps, cfg_scale, seed, images):
        self.calls.append((len(prompts), frames, height, width, images is not None))
        videos = []
        for prompt, image in zip(prompts, images):
            if not self.faithful:
                videos.append(torch.rand(3, frames, height, width) * 2 - 1)
                continue
            dy, dx = DIRECTIONS[parse_caption(prompt)["direction"]]
            videos.append(torch.stack([shifted(image, dy * k // 2, dx * k // 2)
                                       for k in range(frames)], dim=1))
        return videos


def test_a_faithful_animator_scores_everything():
    gen = Animator(faithful=True)
    report = evaluate(gen, cases=3, steps=2)
    assert report["cases"] == 12 and report["image_conditioned"]
    assert report["colour_kept"] == 1.0 and report["direction_followed"] == 1.0
    assert report["first_frame_error"] == 0.0 and report["centroid_shift_px"] < 1e-4
    assert gen.calls == [(4, DATA.frames, DATA.height, DATA.width, True)] * 3
    assert sorted({r["direction"] for r in report["results"]}) == sorted(DIRECTIONS)


def test_noise_does_not():
    report = evaluate(Animator(faithful=False), cases=3, steps=2)
    assert report["first_frame_error"] > 0.5 and report["direction_followed"] < 0.75
