"""Aesthetic scorers: the heuristic's ordering and range, and the LAION head loaded with the
published key names on top of a tiny random CLIP, checked against a hand computation."""

import os

import cv2
import numpy as np
import pytest
import torch

from megagoku.curation.aesthetic import (AestheticScorer, HeuristicAestheticScorer,
                                         LaionAestheticHead, LaionAestheticScorer,
                                         build_aesthetic_scorer, load_laion_head)
from megagoku.curation.features import ClipEmbedder

PUBLISHED_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def vivid_frame(h=96, w=128):
    """Saturated colour blocks with fine stripes and hard edges: sharp, contrasty, colourful."""
    frame = np.zeros((h, w, 3), np.uint8)
    colours = [(230, 30, 40), (20, 200, 60), (30, 50, 230), (240, 220, 20)]
    for i, c in enumerate(colours):
        y, x = divmod(i, 2)
        frame[y * h // 2:(y + 1) * h // 2, x * w // 2:(x + 1) * w // 2] = c
    frame[::4] = 10  # dark stripes every 4 rows
    frame[:, ::6] = 250
    return frame


def dull(frame):
    blurred = cv2.GaussianBlur(frame, (0, 0), 3)
    grey = cv2.cvtColor(cv2.cvtColor(blurred, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return ((blurred.astype(np.float32) * 0.2 + grey.astype(np.float32) * 0.8)).astype(np.uint8)


# --- heuristic -----------------------------------------------------------------------------------

def test_heuristic_ranks_and_bounds():
    scorer = build_aesthetic_scorer("heuristic")
    assert isinstance(scorer, HeuristicAestheticScorer) and isinstance(scorer, AestheticScorer)
    vivid, flat = vivid_frame(), np.full((96, 128, 3), 128, np.uint8)
    s_vivid, s_dull, s_flat = scorer.score(vivid), scorer.score(dull(vivid)), scorer.score(flat)
    assert s_vivid > s_dull + 2.0
    assert s_flat < 0.5
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    for s in (s_vivid, s_dull, s_flat, scorer.score(noise)):
        assert 0.0 <= s <= 10.0
    # Blur alone and desaturation alone each cost something.
    grey = cv2.cvtColor(cv2.cvtColor(vivid, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert scorer.score(grey) < s_vivid
    assert scorer.score(cv2.GaussianBlur(vivid, (0, 0), 3)) < s_vivid


def test_heuristic_is_deterministic_mean_over_frames():
    scorer = HeuristicAestheticScorer()
    a, b = vivid_frame(), dull(vivid_frame())
    clip = np.stack([a, b])
    assert scorer.score(clip) == scorer.score(clip)
    assert scorer.score(clip) == pytest.approx((scorer.score(a) + scorer.score(b)) / 2, abs=1e-9)
    np.testing.assert_allclose(scorer.frame_scores(clip), [scorer.score(a), scorer.score(b)])
    with pytest.raises(ValueError, match="no frames"):
        scorer.score(np.zeros((0, 8, 8, 3), np.uint8))


def test_heuristic_does_not_reward_downscaling():
    # Laplacian variance grows as a picture shrinks; scores are measured at one resolution.
    scorer = HeuristicAestheticScorer()
    big = cv2.resize(dull(vivid_frame()), (512, 384), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(big, (256, 192), interpolation=cv2.INTER_AREA)
    assert abs(scorer.score(big) - scorer.score(small)) < 1.0


# --- LAION ---------------------------------------------------------------------------------------

def random_head_state(d, seed=0):
    torch.manual_seed(seed)
    head = LaionAestheticHead(d)
    return {k: v.clone() for k, v in head.state_dict().items()}


def by_hand(state, emb):
    """The published MLP in eval mode: dropout off, no activations, five affine maps."""
    x = torch.from_numpy(emb).double()
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].double().T + state[f"layers.{i}.bias"].double()
    return x[:, 0].numpy()


def frames(n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_laion_head_loads_published_keys_and_scores(clip_dir, tmp_path, fmt):
    state = random_head_state(16)
    assert set(state) == PUBLISHED_KEYS
    path = tmp_path / f"head.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path))
    scorer = build_aesthetic_scorer("laion", clip_dir=str(clip_dir), head_path=str(path))
    assert isinstance(scorer, LaionAestheticScorer)
    assert not scorer.head.training
    clip = frames()
    emb = ClipEmbedder(clip_dir).embed(clip)
    want = by_hand(state, emb)
    np.testing.assert_allclose(scorer.frame_scores(clip), want, atol=1e-5)
    assert scorer.score(clip) == pytest.approx(want.mean(), abs=1e-5)
    # Eval mode: dropout off, so scoring twice gives the same number.
    assert scorer.score(clip) == scorer.score(clip)


def test_laion_head_dim_mismatch(clip_dir, tmp_path):
    path = tmp_path / "l14-head.pth"
    torch.save(random_head_state(768), path)
    assert load_laion_head(path).input_size == 768
    with pytest.raises(ValueError, match="768-d.*16-d") as err:
        build_aesthetic_scorer("laion", clip_dir=str(clip_dir), head_path=str(path))
    assert str(path) in str(err.value) and str(clip_dir) in str(err.value)


class _Payload:
    """Unpickling this would create a folder: proof that arbitrary code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_laion_head_refuses_pickled_objects(tmp_path):
    marker = tmp_path / "code-ran"
    state = random_head_state(16)
    state["extra"] = _Payload(str(marker))
    path = tmp_path / "evil.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="refused") as err:
        load_laion_head(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_laion_head_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_laion_head(tmp_path / "absent.pth")
    wrong = tmp_path / "wrong-keys.pth"
    torch.save({"fc.weight": torch.zeros(1, 16)}, wrong)
    with pytest.raises(ValueError, match="layers.0.weight"):
        load_laion_head(wrong)
    partial = random_head_state(16)
    del partial["layers.7.bias"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing .*layers.7.bias"):
        load_laion_head(tmp_path / "partial.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_laion_head(tmp_path / "junk.safetensors")


def test_build_aesthetic_scorer_fields(tmp_path):
    with pytest.raises(ValueError, match="aesthetic.clip_dir"):
        build_aesthetic_scorer("laion", head_path="head.pth")
    with pytest.raises(ValueError, match="aesthetic.head_path"):
        build_aesthetic_scorer("laion", clip_dir=str(tmp_path))
    with pytest.raises(ValueError, match="aesthetic.backend"):
        build_aesthetic_scorer("musiq")
