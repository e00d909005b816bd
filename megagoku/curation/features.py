"""Per-frame feature embedders, used to split videos into scenes and to score them.

Scene splitting samples a video at 1 fps, embeds every sampled frame and cuts where adjacent
frames are dissimilar (Goku: DINOv2 cosine similarity below 0.85, or 0.90 for the stricter pass).
Every embedder returns (T, D) float32 rows of unit length, so `adjacent_similarity` is a row-wise
dot product whatever produced them.

- `ThumbnailEmbedder`: the cheap offline default (no model, no download). It compares layout and
  colour, not semantics: it cuts on pans, zooms and large moving objects that DINOv2 would keep
  within one scene, so thresholds tuned for DINOv2 are only a starting point for it.
- `Dinov2Embedder`: a DINOv2 checkpoint in Hugging Face format (config.json with model_type
  "dinov2"). timm and original-repo (facebookresearch/dinov2) checkpoints are not read: convert
  them with the key mapping of transformers' `models/dinov2/convert_dinov2_to_hf.py` (in the
  transformers source repository, not the installed wheel; the script itself fetches through
  torch.hub, so on an offline machine reuse its `create_rename_keys` and `read_in_q_k_v`).
- `ClipEmbedder`: a CLIP vision tower with its projection (a full CLIP checkpoint such as
  clip-vit-large-patch14 loads too); its `image_embeds` are what the LAION aesthetic head reads.

Model directories are local only; nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional, Protocol, Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

EMBEDDER_KINDS = ("thumbnail", "dinov2", "clip")


class FrameEmbedder(Protocol):
    name: str

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames (or one (H, W, 3) frame) -> (T, D) float32 unit rows."""
        ...


def as_frames(frames: np.ndarray) -> np.ndarray:
    """Checks frames and returns them as (T, H, W, 3) uint8 (one (H, W, 3) frame gives T = 1)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected a uint8 numpy array, got "
                         f"{type(frames).__name__} {getattr(frames, 'dtype', '')}".rstrip())
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames: expected RGB (H, W, 3) or (T, H, W, 3), got shape "
                         f"{tuple(frames.shape)}")
    return frames


def adjacent_similarity(embeddings: np.ndarray) -> np.ndarray:
    """(T, D) embeddings -> (T-1,) float32 cosine similarity of each row with the next.

    Rows are renormalised here so that unnormalised features work too; a zero row gives 0."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected (T, D), got shape {emb.shape}")
    if emb.shape[0] < 2:
        return np.zeros(0, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1)
    dots = np.einsum("td,td->t", emb[:-1], emb[1:])
    denom = norms[:-1] * norms[1:]
    sims = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return np.clip(sims, -1.0, 1.0).astype(np.float32)


class ThumbnailEmbedder:
    """Each frame shrunk to size x size RGB, centred and scaled to unit length.

    Subtracting the vector's mean makes cosine similarity a correlation: a global brightness
    shift (exposure change, fade) does not count, a change of layout or colour balance does.
    It compares layout and colour, not semantics: camera moves that DINOv2 sees as the same
    scene can fall below a DINOv2-tuned threshold, so treat such thresholds as a starting point.

    A flat frame (centred RMS below `flat_rms` grey levels: black, a solid colour, a fade's last
    frame) has no layout to normalise; it maps to the constant unit vector, which is orthogonal to
    every centred vector. So two flat frames in a row are similar (1.0, no cut inside a run of
    black), and a flat frame next to a textured one has similarity 0 (a cut). The tolerance keeps
    quantisation noise of an almost-flat frame from being blown up into a random layout.
    """

    def __init__(self, size: int = 16, flat_rms: float = 0.5):
        if size < 2:
            raise ValueError(f"ThumbnailEmbedder: size must be at least 2, got {size}")
        self.size = int(size)
        self.flat_rms = float(flat_rms)
        self.dim = 3 * self.size * self.size
        self.name = f"thumbnail{self.size}"

    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = as_frames(frames)
        out = np.empty((frames.shape[0], self.dim), dtype=np.float32)
        flat = np.full(self.dim, 1.0 / np.sqrt(self.dim), dtype=np.float32)
        for i, frame in enumerate(frames):
            small = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
            vec = small.astype(np.float64).ravel()
            vec -= vec.mean()
            norm = np.linalg.norm(vec)
            if norm <= self.flat_rms * np.sqrt(self.dim):
                out[i] = flat
            else:
                out[i] = vec / norm
        return out


def _model_dir(model_dir: str | os.PathLike, what: str, model_types: Sequence[str]) -> Path:
    """Checks a local Hugging Face model folder and returns it; one clear ValueError otherwise."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"{what} model directory {path}: not a directory")
    config = path / "config.json"
    if not config.is_file():
        hint = (" (timm / original DINOv2 checkpoints must first be converted to Hugging Face "
                "format, see megagoku.curation.features)" if "dinov2" in model_types else "")
        raise ValueError(f"{what} model directory {path}: no config.json, not a Hugging Face "
                         f"model folder{hint}")
    try:
        meta = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} model directory {path}: unreadable config.json ({exc})") from None
    model_type = meta.get("model_type") if isinstance(meta, dict) else None
    if model_type not in model_types:
        raise ValueError(f"{what} model directory {path}: config.json has model_type "
                         f"{model_type!r}, expected one of {list(model_types)}")
    return path


def _load(path: Path, what: str, loader):
    """Runs a from_pretrained-style loader offline, turning its failures into a ValueError."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # The callers check the loading report themselves: a full CLIP folder's unused text tower
    # would otherwise print a table of "UNEXPECTED" keys on every load.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return loader(path)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{what} model directory {path}: cannot load ({first})") from exc
    finally:
        hf_logging.set_verbosity(verbosity)


def resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Shortest edge to `size`, then the central size x size square (what the HF processors do).

    Shrinking uses INTER_AREA: the processors' PIL resize is antialiased and cv2's bicubic is not,
    so a 1080p frame resized bicubically would alias."""
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        frame = cv2.resize(frame, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return frame[top:top + size, left:left + size]


class _HFImageEmbedder(ABC):
    """Shared batching for the Hugging Face vision models: preprocess, forward, pick, normalise."""

    what = ""
    kind = ""
    model_types: tuple[str, ...] = ()
    fallback_mean: tuple[float, float, float] = IMAGENET_MEAN
    fallback_std: tuple[float, float, float] = IMAGENET_STD
    # Weights a checkpoint may lack without changing the embedding.
    optional_keys: frozenset[str] = frozenset()

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu",
                 batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"{self.what}: batch_size must be at least 1, got {batch_size}")
        self.model_dir = _model_dir(model_dir, self.what, self.model_types)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.model = self._load_model().to(self.device).eval().requires_grad_(False)
        self.processor = None
        if (self.model_dir / "preprocessor_config.json").is_file():
            from transformers import AutoImageProcessor

            self.processor = _load(self.model_dir, self.what,
                                   lambda p: AutoImageProcessor.from_pretrained(
                                       p, local_files_only=True))
        self.dim = self._dim()
        self.name = f"{self.kind}:{self.model_dir.name}"

    @abstractmethod
    def _model_class(self):
        """The transformers class the folder loads as."""

    def _config(self, path: Path):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path, local_files_only=True)

    def _load_model(self) -> torch.nn.Module:
        # transformers re-initialises missing weights randomly (with only a logged warning): an
        # embedder built on them would look fine and cut at random, so the report is checked.
        # float32 whatever the checkpoint was saved in: cut thresholds near 0.9 should not move
        # with the storage dtype, and half precision is unreliable on CPU.
        model, info = _load(self.model_dir, self.what,
                            lambda p: self._model_class().from_pretrained(
                                p, config=self._config(p), local_files_only=True,
                                dtype=torch.float32, output_loading_info=True,
                                ignore_mismatched_sizes=True))
        missing = sorted(set(info.get("missing_keys", ())) - self.optional_keys)
        mismatched = [f"{key} {tuple(ckpt)} vs {tuple(want)}"
                      for key, ckpt, want in info.get("mismatched_keys", ())]
        if missing or mismatched:
            raise ValueError(f"{self.what} model directory {self.model_dir}: checkpoint does not "
                             f"match its config (missing {missing[:4]}"
                             f"{'...' if len(missing) > 4 else ''}, wrong shape {mismatched[:4]})")
        return model

    @abstractmethod
    def _dim(self) -> int:
        """Width of the embedding."""

    def _fallback_size(self) -> int:
        return 224

    @abstractmethod
    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's embedding of a preprocessed batch, before normalisation."""

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) float32 model input, by the folder's image
        processor when it has one, else shortest edge + centre crop + the family's mean/std."""
        frames = as_frames(frames)
        if self.processor is not None:
            # Said explicitly: inference from the shape is ambiguous for frames 3 pixels wide.
            batch = self.processor(images=list(frames), return_tensors="pt",
                                   input_data_format="channels_last")
            return batch["pixel_values"].float()
        size = self._fallback_size()
        crops = np.stack([resize_center_crop(f, size) for f in frames]).astype(np.float32)
        crops = (crops / 255.0 - np.asarray(self.fallback_mean, np.float32)) \
            / np.asarray(self.fallback_std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = as_frames(frames)
        out = np.empty((frames.shape[0], self.dim), dtype=np.float32)
        for start in range(0, frames.shape[0], self.batch_size):
            pixels = self.preprocess(frames[start:start + self.batch_size]).to(self.device)
            feats = self._features(pixels).float()
            feats = torch.nn.functional.normalize(feats, dim=-1)
            out[start:start + feats.shape[0]] = feats.cpu().numpy()
        return out


class Dinov2Embedder(_HFImageEmbedder):
    """DINOv2 CLS embedding (the layer-normed CLS token, `pooler_output`), L2-normalised.

    Checkpoints ship a BitImageProcessor (shortest edge 256, centre crop 224); without one the
    frame's shortest edge goes to 224 and is centre-cropped, ImageNet mean/std. Either way a wide
    frame's sides are cropped away, as in DINOv2's own evaluation."""

    what = "DINOv2"
    kind = "dinov2"
    model_types = ("dinov2", "dinov2_with_registers")
    optional_keys = frozenset({"embeddings.mask_token"})  # masked-image training only

    def _model_class(self):
        from transformers import AutoModel

        return AutoModel

    def _dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


class ClipEmbedder(_HFImageEmbedder):
    """CLIP image embedding: the projected `image_embeds`, L2-normalised (the LAION aesthetic
    head's input). Without a preprocessor_config.json the frame's shortest edge goes to the
    model's image_size (224 for ViT-L/14) and is centre-cropped, CLIP mean/std."""

    what = "CLIP"
    kind = "clip"
    model_types = ("clip", "clip_vision_model")
    fallback_mean = CLIP_MEAN
    fallback_std = CLIP_STD

    def _model_class(self):
        from transformers import CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection

    def _config(self, path: Path):
        config = super()._config(path)
        if config.model_type == "clip":
            # A full CLIP folder: the projection is sized by the top-level projection_dim, which
            # the vision sub-config need not repeat (its own default is 512).
            vision = config.vision_config
            vision.projection_dim = config.projection_dim
            return vision
        return config

    def _dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _fallback_size(self) -> int:
        # The vision tower's position embeddings are fixed to image_size; a 336-px model fed 224
        # would fail, so the fallback follows the config rather than a constant.
        return int(self.model.config.image_size)

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).image_embeds


def build_embedder(kind: str, model_dir: Optional[str] = None,
                   device: str | torch.device = "cpu") -> FrameEmbedder:
    """The embedder for `features.kind`; "thumbnail" needs no model and ignores model_dir."""
    if kind == "thumbnail":
        return ThumbnailEmbedder()
    if kind not in EMBEDDER_KINDS:
        raise ValueError(f"features.kind: {kind!r} is not one of {list(EMBEDDER_KINDS)}")
    if not model_dir:
        raise ValueError(f"features.model_dir: the {kind!r} embedder needs a local model "
                         "directory (nothing is downloaded)")
    if kind == "dinov2":
        return Dinov2Embedder(model_dir, device=device)
    return ClipEmbedder(model_dir, device=device)
