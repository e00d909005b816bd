"""Aesthetic scores for clips, used to drop ugly footage before training (Goku filters on the
mean LAION aesthetic score over a clip's keyframes).

Two backends, built by `build_aesthetic_scorer`:

- `laion`: the LAION "improved aesthetic predictor" (christophschuhmann/improved-aesthetic-
  predictor), an MLP head over L2-normalised CLIP ViT-L/14 image embeddings (768-d). The
  published weights are `sac+logos+ava1-l14-linearMSE.pth`; they load here as they are (the head
  keeps the published module layout, so the state dict keys `layers.0.weight` ... `layers.7.bias`
  match), from a `.pth` (read with `weights_only=True`: tensors only, never arbitrary pickled
  objects) or a `.safetensors` file. Scores are on the AVA-like 1-10 scale the head was trained on.
- `heuristic`: a cheap offline stand-in for the built-in data and for laptops. IT IS NOT THE LAION
  SCALE and not a learned aesthetic model: it measures sharpness, contrast and colourfulness
  only, so thresholds tuned for LAION scores (Goku's) do not transfer to it.

A clip's score is the mean over the frames given (its keyframes).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch import nn

from megagoku.curation.features import ClipEmbedder, as_frames

AESTHETIC_BACKENDS = ("laion", "heuristic")


class AestheticScorer(ABC):
    """Scores frames; `score` is the clip score, the mean of the per-frame scores."""

    backend = ""

    @abstractmethod
    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB (or one (H, W, 3) frame) -> (T,) float64 scores."""

    def score(self, frames: np.ndarray) -> float:
        frames = as_frames(frames)
        if frames.shape[0] == 0:
            raise ValueError("aesthetic: no frames to score")
        return float(np.mean(self.frame_scores(frames)))


# --- heuristic -----------------------------------------------------------------------------------

# The heuristic measures at a fixed resolution: the Laplacian's variance of the same picture
# grows as it is shrunk, so without this a 480p clip would outscore its 1080p original.
HEURISTIC_SHORT_SIDE = 256
# Each measure m is squashed by 1 - exp(-m / scale); a measure at its scale gives 0.63.
# Sharpness: Laplacian variance ~100 is the usual "blurry" line, crisp footage is many hundreds.
SHARPNESS_SCALE = 300.0
# Contrast: grey-level std; well exposed natural images sit around 50-70.
CONTRAST_SCALE = 40.0
# Colourfulness (Hasler & Suesstrunk 2003): 33 "moderately", 59 "quite", 82 "highly" colourful.
COLOURFULNESS_SCALE = 50.0
HEURISTIC_WEIGHTS = (0.4, 0.3, 0.3)  # sharpness, contrast, colourfulness; sum 1 -> score 0..10


def _squash(value: float, scale: float) -> float:
    return float(1.0 - np.exp(-max(value, 0.0) / scale))


def colourfulness(frame: np.ndarray) -> float:
    """Hasler-Suesstrunk colourfulness of one RGB uint8 frame (0 for any grey frame)."""
    rgb = frame.astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def heuristic_components(frame: np.ndarray) -> dict[str, float]:
    """Sharpness, contrast and colourfulness of one frame, each squashed to [0, 1]."""
    h, w = frame.shape[:2]
    scale = HEURISTIC_SHORT_SIDE / min(h, w)
    if scale != 1.0:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=interp)
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    laplacian = cv2.Laplacian(gray, cv2.CV_64F)
    return {"sharpness": _squash(float(laplacian.var()), SHARPNESS_SCALE),
            "contrast": _squash(float(gray.std()), CONTRAST_SCALE),
            "colourfulness": _squash(colourfulness(frame), COLOURFULNESS_SCALE)}


class HeuristicAestheticScorer(AestheticScorer):
    """0-10 from sharpness, contrast and colourfulness; NOT comparable with LAION scores.

    Deterministic and model-free. A flat grey frame scores 0; a sharp, contrasty, colourful
    frame approaches 10. Blind to composition and content, and noise or compression artefacts
    read as sharpness: it only ranks footage coarsely (blurry, washed-out, dull below crisp)."""

    backend = "heuristic"

    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        frames = as_frames(frames)
        scores = np.empty(frames.shape[0], dtype=np.float64)
        for i, frame in enumerate(frames):
            parts = heuristic_components(frame)
            scores[i] = 10.0 * sum(w * parts[k] for w, k in zip(
                HEURISTIC_WEIGHTS, ("sharpness", "contrast", "colourfulness")))
        return scores


# --- LAION ---------------------------------------------------------------------------------------

class LaionAestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor MLP, module for module, so that the published
    state dict (`layers.0.*`, `layers.2.*`, `layers.4.*`, `layers.6.*`, `layers.7.*`) loads.

    There are no activations, as published (upstream's ReLUs are commented out): in eval mode
    the head is one affine map of the embedding, kept as five layers only for the key names."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = int(input_size)
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"aesthetic.head_path {path}: not a readable safetensors file "
                             f"({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler's refusals and plain corruption alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"aesthetic.head_path {path}: refused, not a plain tensor state dict "
                         f"({first})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint around the head
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"aesthetic.head_path {path}: expected a state dict of tensors, got "
                         f"{type(state).__name__}")
    return state


def load_laion_head(head_path: str | os.PathLike) -> LaionAestheticHead:
    """The head from a local .pth / .safetensors state dict, input size read from the weights,
    in eval mode (no dropout)."""
    path = Path(head_path)
    if not path.is_file():
        raise ValueError(f"aesthetic.head_path {path}: no such file")
    state = _read_state_dict(path)
    first = state.get("layers.0.weight")
    if first is None or first.dim() != 2:
        raise ValueError(f"aesthetic.head_path {path}: no 2-d `layers.0.weight`, not a LAION "
                         f"aesthetic head (keys: {sorted(state)[:6]})")
    head = LaionAestheticHead(first.shape[1])
    expected = set(head.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"aesthetic.head_path {path}: keys do not match the LAION head "
                         f"(missing {missing}, unexpected {extra})")
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(f"aesthetic.head_path {path}: tensor shapes do not match the LAION "
                         f"head ({str(exc).splitlines()[-1].strip()})") from exc
    return head.eval().requires_grad_(False)


class LaionAestheticScorer(AestheticScorer):
    """CLIP image embedding (L2-normalised projection) -> LAION MLP head, per frame."""

    backend = "laion"

    def __init__(self, clip_dir: str | os.PathLike, head_path: str | os.PathLike,
                 device: str | torch.device = "cpu", batch_size: int = 16):
        head = load_laion_head(head_path)  # first: it is cheap and catches a wrong file early
        self.embedder = ClipEmbedder(clip_dir, device=device, batch_size=batch_size)
        if head.input_size != self.embedder.dim:
            raise ValueError(f"aesthetic.head_path {head_path} takes {head.input_size}-d "
                             f"embeddings but aesthetic.clip_dir {clip_dir} projects to "
                             f"{self.embedder.dim}-d (the published head needs CLIP ViT-L/14)")
        self.device = torch.device(device)
        self.head = head.to(self.device)

    @torch.inference_mode()
    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        emb = torch.from_numpy(self.embedder.embed(frames)).to(self.device)
        return self.head(emb)[:, 0].double().cpu().numpy()


def build_aesthetic_scorer(backend: str, clip_dir: Optional[str] = None,
                           head_path: Optional[str] = None,
                           device: str | torch.device = "cpu") -> AestheticScorer:
    """The scorer for `aesthetic.backend`; "laion" needs `aesthetic.clip_dir` and
    `aesthetic.head_path`, "heuristic" needs nothing and ignores them."""
    if backend == "heuristic":
        return HeuristicAestheticScorer()
    if backend != "laion":
        raise ValueError(f"aesthetic.backend: {backend!r} is not one of "
                         f"{list(AESTHETIC_BACKENDS)}")
    if not clip_dir:
        raise ValueError("aesthetic.clip_dir: the laion backend needs a local CLIP model "
                         "directory (ViT-L/14 for the published head)")
    if not head_path:
        raise ValueError("aesthetic.head_path: the laion backend needs the head's weights file "
                         "(sac+logos+ava1-l14-linearMSE.pth or a .safetensors copy)")
    return LaionAestheticScorer(clip_dir, head_path, device=device)
