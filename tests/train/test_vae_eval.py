"""The reconstruction figures `megagoku train-vae` ends with: the foreground, the scores of a
perfect and of a background-only reconstruction, the held-out clips, the picture."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from megagoku.config import DataConfig
from megagoku.data import ShapesDataset
from megagoku.train import vae_eval


def test_foreground_is_what_differs_from_each_samples_background():
    x = torch.full((2, 3, 1, 4, 4), -1.0)
    x[0, 0, 0, 1, 1] = 1.0  # a red pixel on black
    x[0, :, 0, 2, 2] = -0.95  # within the threshold of the background: not foreground
    x[1] = 0.5  # a grey background...
    x[1, 2, 0, 3, 3] = -1.0  # ...with one pixel off in the blue channel only
    background, mask = vae_eval.foreground_mask(x)
    assert background.flatten().tolist() == [-1.0, -1.0, -1.0, 0.5, 0.5, 0.5]
    expected = torch.zeros(2, 1, 1, 4, 4, dtype=torch.bool)
    expected[0, 0, 0, 1, 1] = expected[1, 0, 0, 3, 3] = True
    assert torch.equal(mask, expected)


DATA = DataConfig(height=32, width=32, frames=9, displacement=(0.5, 0.7))


def test_held_out_clips_are_unseen_clips_of_the_holdout_captions():
    clips = vae_eval.held_out_clips(DATA, 3)
    assert [tuple(c.shape) for c in clips] == [(3, 9, 32, 32)] * 3
    training = ShapesDataset(DATA)
    assert not any(torch.equal(c, training[i].pixels) for c in clips for i in range(20))
    holdout = ShapesDataset(DataConfig(height=32, width=32, frames=9, displacement=(0.5, 0.7),
                                       seed=DATA.seed + vae_eval.HELD_OUT_SEED_OFFSET,
                                       image_fraction=0.0), "holdout")
    assert all(torch.equal(c, holdout[i].pixels) for i, c in enumerate(clips))


def test_a_perfect_reconstruction_scores_zero_and_the_background_scores_the_baseline():
    clips = vae_eval.held_out_clips(DATA, 4)
    fg, baseline, psnr, agreement = vae_eval.score(clips, clips, describe=True)
    assert fg == 0 and psnr == math.inf and agreement == 1.0 and baseline > 1.0
    black = [torch.full_like(c, -1.0) for c in clips]
    fg, baseline_again, psnr, agreement = vae_eval.score(clips, black, describe=True)
    assert fg == pytest.approx(baseline, rel=1e-6) and baseline_again == baseline
    assert agreement == 0.0  # nothing to read colour or motion from
    # Black misses only the shape (~7% of the pixels, off by ~2 in one or two channels).
    assert 14 < psnr < 20
    assert vae_eval.score(clips, black, describe=False)[3] is None


def test_picture_puts_each_original_over_its_reconstruction(tmp_path):
    clips = vae_eval.held_out_clips(DATA, 2)
    black = [torch.full_like(c, -1.0) for c in clips]
    out = vae_eval.write_picture(clips, black, tmp_path / "r.png")
    picture = Image.open(out)
    assert picture.size == (9 * 32 + 8 * 2, 4 * 32 + 6)  # 9 frames, 2 gaps of 2 px; 4 rows
    pixels = np.asarray(picture)
    # Frame 0 of the first clip: the shape (a full colour channel) above, black below.
    assert pixels[:32, :32].max() == 255 and pixels[32:64, :32].max() == 0
