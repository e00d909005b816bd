"""Motion score: ~0 for a static clip, proportional to the speed of a moving object, in pixels at
the normalised short side (a pan of k px scores ~k) and so the same at any source resolution;
the RAFT backend explains what it is missing; bad input raises ValueError."""

import sys
import types

import cv2
import numpy as np
import pytest

from megagoku.curation.motion import motion_score, normalised_size


def texture(h: int, w: int, seed: int, sigma: float) -> np.ndarray:
    """Blurred noise stretched to the full 0..255 range: blurring alone leaves so little
    contrast that Farneback sees almost no structure to track."""
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), sigma), None, 0, 255, cv2.NORM_MINMAX)


def moving_square(speed: int, scale: int = 1, frames: int = 6) -> np.ndarray:
    """A textured 64 px square crossing a static textured 256x192 background at `speed` px
    per frame, everything drawn `scale` times larger."""
    background = texture(192 * scale, 256 * scale, 0, 2 * scale)
    square = texture(64 * scale, 64 * scale, 1, 1.5 * scale)
    clip = []
    for t in range(frames):
        frame = background.copy()
        x, y = (40 + speed * t) * scale, 60 * scale
        frame[y:y + 64 * scale, x:x + 64 * scale] = square
        clip.append(frame)
    return np.stack(clip)


def test_a_static_clip_scores_about_zero():
    assert motion_score(moving_square(0)) < 0.05


def test_the_score_grows_with_the_speed():
    slow, fast = motion_score(moving_square(2)), motion_score(moving_square(4))
    assert slow > 0.1 > 2 * motion_score(moving_square(0))
    assert 1.5 < fast / slow < 2.5, (slow, fast)


def test_the_same_content_at_twice_the_resolution_scores_the_same():
    small, large = motion_score(moving_square(3)), motion_score(moving_square(3, scale=2))
    assert abs(large - small) < 0.25 * small, (small, large)


def test_a_pan_scores_its_shift_in_pixels_at_the_normalised_short_side():
    world = texture(300, 500, 3, 2)
    pan = np.stack([world[20:276, 10 + 3 * t:330 + 3 * t] for t in range(5)])  # 256 x 320
    assert abs(motion_score(pan) - 3.0) < 0.15
    assert abs(motion_score(pan, short_side=128) - 1.5) < 0.1
    assert normalised_size(1080, 1920, 256) == (256, 455)
    assert normalised_size(1920, 1080, 256) == (455, 256)


def test_fewer_than_two_frames_score_zero():
    clip = moving_square(4)
    assert motion_score(clip[:1]) == 0.0
    assert motion_score([]) == 0.0
    assert motion_score(list(clip)) == motion_score(clip)


def test_raft_without_torchvision_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ValueError, match="motion.backend raft needs torchvision"):
        motion_score(moving_square(2), backend="raft", weights_path="raft.pth")


def test_raft_needs_a_local_weights_file(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    with pytest.raises(ValueError, match="needs weights_path"):
        motion_score(moving_square(2), backend="raft")
    with pytest.raises(ValueError, match="not found: .*raft_large.pth"):
        motion_score(moving_square(2), backend="raft",
                     weights_path=str(tmp_path / "raft_large.pth"))


def test_raft_plumbing_with_a_stand_in_network(monkeypatch, tmp_path):
    # torchvision is not installed here; a stand-in checks what RAFT is fed and answers a
    # constant (3, 4) px flow as its last prediction, after a deliberately wrong earlier one.
    import torch

    from megagoku.curation import motion

    seen = []

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, a, b):
            seen.append((tuple(a.shape), float(a.min()), float(a.max())))
            n, _, h, w = a.shape
            flow = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).expand(n, 2, h, w)
            return [100 * flow, flow]

    weights = tmp_path / "raft_small.pth"
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setattr(motion, "_raft_model", lambda path: StandIn())
    clip = moving_square(2, frames=11)  # 10 pairs: a batch of 8 and one of 2
    assert motion_score(clip, backend="raft", weights_path=str(weights)) == pytest.approx(5.0)
    assert [shape[0] for shape, _, _ in seen] == [8, 2]
    for (n, c, h, w), low, high in seen:
        assert c == 3 and h % 8 == 0 and w % 8 == 0 and min(h, w) == 256
        assert -1.0 <= low < -0.9 and 0.9 < high <= 1.0


def test_bad_arguments_raise():
    clip = moving_square(2, frames=2)
    with pytest.raises(ValueError, match="one of farneback, raft"):
        motion_score(clip, backend="lucas-kanade")
    with pytest.raises(ValueError, match="short_side"):
        motion_score(clip, short_side=0)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        motion_score(clip[0])
    with pytest.raises(ValueError, match="uint8 RGB"):
        motion_score(clip.astype(np.float32))
    with pytest.raises(ValueError, match="one size"):
        motion_score([clip[0], clip[1][:100]])
