"""Motion score: the mean optical-flow magnitude between consecutive sampled frames.

Curation drops clips that barely move (slideshows, static shots) and clips that move
implausibly fast (flashes, hard cuts), and both need one number per clip. The score is the
per-pixel flow magnitude, averaged over the frame and over each consecutive pair of the frames
given, in pixels at a NORMALISED resolution: every frame is first resized so that its short side
is `short_side` pixels (256 by default). A 4K copy and a 480p copy of the same clip therefore
score the same, and one threshold serves a whole mixed-resolution corpus. The score depends on
how the caller samples frames (the flow between frames 1 s apart is larger than between frames
1/30 s apart), so sample at a fixed rate, and close enough that real motion stays under ~20
px per pair at the normalised size: past that Farneback loses track and reports LESS motion,
so a very fast clip can slip under an upper threshold.

Backends:
    farneback  OpenCV's dense Farneback flow on grayscale: CPU, no weights, the default.
    raft       torchvision's RAFT (raft_large or raft_small, chosen from the state dict) with
               weights from a local file: sharper on large, textureless or fast motion; uses
               CUDA when present. torchvision is imported only here.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Sequence, Union

import cv2
import numpy as np

Frames = Union[np.ndarray, Sequence[np.ndarray]]
BACKENDS = ("farneback", "raft")


def _check_frames(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"motion_score needs frames (T, H, W, 3); got shape {frames.shape}")
    frames = list(frames)
    for f in frames:
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 \
                or f.shape[2] != 3:
            got = (f"{f.dtype} array of shape {f.shape}" if isinstance(f, np.ndarray)
                   else type(f).__name__)
            raise ValueError(f"motion_score needs uint8 RGB frames (H, W, 3); got {got}")
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError("motion_score needs frames of one size; got "
                         f"{sorted({f.shape for f in frames})}")
    return frames


def normalised_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side at `short_side` and the aspect ratio kept."""
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    # Area averaging when shrinking, so fine texture does not alias into spurious flow.
    shrink = h < frame.shape[0]
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _farneback(frames: list[np.ndarray], size: tuple[int, int]) -> float:
    gray = [_resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size) for f in frames]
    total = 0.0
    for a, b in zip(gray[:-1], gray[1:]):
        # Measured on textured pans at short side 256: exact to ~20 px per pair, then it
        # UNDERestimates (30 px reads as ~12) and more pyramid levels do not help.
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=4, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
        total += float(np.linalg.norm(flow, axis=-1).mean())
    return total / (len(gray) - 1)


@functools.lru_cache(maxsize=2)
def _raft_model(weights_path: str):
    """The RAFT network for a weights file, built once per process and kept."""
    import torch
    from torchvision.models.optical_flow import raft_large, raft_small
    if weights_path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(weights_path)
    else:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # raft_small has no convex-upsampling mask predictor; raft_large does.
    large = any(k.startswith("mask_predictor.") for k in state)
    model = (raft_large if large else raft_small)(weights=None, progress=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"motion.backend raft: {weights_path} is not a torchvision RAFT "
                         f"state dict ({str(exc).splitlines()[0]})") from exc
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.eval().to(device)


def _raft(frames: list[np.ndarray], size: tuple[int, int], weights_path: str | None,
          batch: int = 8) -> float:
    try:
        import torch
        import torch.nn.functional as F
        importlib.import_module("torchvision")  # fail here, before any work, when missing
    except ImportError as exc:
        raise ValueError("motion.backend raft needs torchvision (pip install torchvision, "
                         f"matching torch); it could not be imported: {exc}") from exc
    if weights_path is None:
        raise ValueError("motion.backend raft needs weights_path: a local RAFT state dict "
                         "(.pth or .safetensors)")
    if not os.path.isfile(weights_path):
        raise ValueError(f"motion.backend raft: weights file not found: {weights_path}")
    model = _raft_model(str(weights_path))
    device = next(model.parameters()).device
    clip = np.stack([_resize(f, size) for f in frames])
    x = torch.from_numpy(clip).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [-1, 1]
    h, w = size
    # RAFT needs sides divisible by 8: pad by edge replication, crop the flow back.
    pad_h, pad_w = -h % 8, -w % 8
    x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(frames) - 1, batch):
            stop = min(start + batch, len(frames) - 1)
            flow = model(x[start:stop], x[start + 1:stop + 1])[-1][:, :, :h, :w]
            total += float(flow.norm(dim=1).mean(dim=(1, 2)).sum())
    return total / (len(frames) - 1)


def motion_score(frames: Frames, backend: str = "farneback", short_side: int = 256,
                 weights_path: str | None = None) -> float:
    """Mean optical-flow magnitude in pixels at `short_side` resolution, averaged over the
    consecutive pairs of `frames` ((T, H, W, 3) uint8 RGB or a list of such frames). Fewer than
    two frames have no motion to measure and score 0.0."""
    if backend not in BACKENDS:
        raise ValueError(f"motion.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if not isinstance(short_side, int) or short_side < 16:
        raise ValueError(f"motion.short_side must be an int >= 16; got {short_side!r}")
    frames = _check_frames(frames)
    if len(frames) < 2:
        return 0.0
    size = normalised_size(*frames[0].shape[:2], short_side)
    if backend == "raft":
        return _raft(frames, size, weights_path)
    return _farneback(frames, size)
