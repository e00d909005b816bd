"""The curation pipeline's configuration (`megagoku curate --config FILE`): one section per stage.

The defaults are the Goku paper's 480p tier (Tables 3-4) with the offline backends: thumbnail
features for the fine split and the heuristic aesthetic stand-in. The tiers are presets in
`configs/curate/` (`480p.yaml`, `720p.yaml`, `1080p.yaml`); a file may start from one with
`base: 720p.yaml` and change what it needs. Validated once, before any file is touched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional, Union

from megagoku.config.loader import (CONFIGS_DIR, ConfigError, _read_yaml, _set_path,
                                    config_from_dict, parse_overrides)

Problem = tuple[str, str]


def _absent(section, *names: str) -> Iterator[Problem]:
    """Model paths (`*_dir` folders, other files) that are set but not there: found now, before
    any file is curated."""
    for name in names:
        path = getattr(section, name)
        folder = name.endswith("_dir")
        if path and not (Path(path).is_dir() if folder else Path(path).is_file()):
            yield name, f"no such {'directory' if folder else 'file'}: {path}"


STAGES = ("probe", "split", "filter", "dedup", "caption", "balance", "export")
# The stages a shard runs by itself; balancing needs every clip's category, so it (and the
# export after it) run once, after the shards are merged.
SHARD_STAGES = STAGES[:5]


@dataclass
class ProbeConfig:
    """Pre-filter on container metadata (Goku: >= 4 s, short side >= 480, >= 500 kbps,
    >= 24 fps)."""

    min_duration: float = 4.0
    min_side: int = 480  # images too
    min_bitrate_kbps: float = 500.0  # 0 turns the check off (images have no bitrate)
    min_fps: float = 24.0
    # Re-encode each source to H.264 (at reencode_fps, or its own rate) before splitting, so that
    # every later stage reads one codec at one rate.
    reencode: bool = False
    reencode_fps: Optional[float] = None

    def problems(self) -> Iterator[Problem]:
        for name in ("min_duration", "min_bitrate_kbps", "min_fps"):
            if getattr(self, name) < 0:
                yield name, f"must be >= 0, got {getattr(self, name)}"
        if self.min_side < 1:
            yield "min_side", f"must be >= 1, got {self.min_side}"
        if self.reencode_fps is not None and self.reencode_fps <= 0:
            yield "reencode_fps", f"must be > 0, got {self.reencode_fps}"


@dataclass
class SplitConfig:
    """Coarse split by PySceneDetect's content detector, then a fine split where the features of
    adjacent frames sampled at `sample_fps` are less similar than `similarity` (Goku: DINOv2,
    0.85 at 480p, 0.90 at 720p and up); clips are capped at `max_clip_seconds`."""

    detector_threshold: float = 27.0  # ContentDetector's default
    features: Literal["thumbnail", "dinov2", "clip"] = "thumbnail"
    model_dir: Optional[str] = None  # a local HF-format DINOv2 (or CLIP) directory
    similarity: float = 0.85
    # ...and where their colour histograms differ by at least this (total variation, 0-1): an
    # object moving in one shot changes the layout, not the colours (curation/split.py).
    min_colour_change: float = 0.25
    sample_fps: float = 1.0
    min_clip_seconds: float = 2.0
    max_clip_seconds: float = 10.0
    clip_format: Literal[".mp4", ".webm"] = ".mp4"  # clips are re-encoded: H.264 or VP9

    def problems(self) -> Iterator[Problem]:
        if self.detector_threshold <= 0:
            yield "detector_threshold", f"must be > 0, got {self.detector_threshold}"
        if self.features != "thumbnail" and not self.model_dir:
            yield "model_dir", f"features: {self.features} needs a local model directory"
        yield from _absent(self, "model_dir")
        if not 0 < self.similarity <= 1:
            yield "similarity", f"must be in (0, 1], got {self.similarity}"
        if not 0 <= self.min_colour_change <= 1:
            yield "min_colour_change", f"must be in [0, 1], got {self.min_colour_change}"
        if self.sample_fps <= 0:
            yield "sample_fps", f"must be > 0, got {self.sample_fps}"
        if self.min_clip_seconds <= 0:
            yield "min_clip_seconds", f"must be > 0, got {self.min_clip_seconds}"
        if self.max_clip_seconds < self.min_clip_seconds:
            yield "max_clip_seconds", (f"{self.max_clip_seconds} is below min_clip_seconds "
                                       f"{self.min_clip_seconds}")


@dataclass
class FilterConfig:
    """Scores every clip (and image) and drops those outside the tier's thresholds. A threshold of
    None keeps the score without filtering on it."""

    keyframes: int = 3  # evenly spaced frames for aesthetics, OCR and the hash
    # laion: the LAION aesthetic predictor head (head_path) over CLIP image features (clip_dir);
    # heuristic: sharpness, contrast and colourfulness on 0-10, NOT the LAION scale (see
    # curation/aesthetic.py); none: no aesthetic score (dedup then keeps the longer clip).
    aesthetic: Literal["laion", "heuristic", "none"] = "heuristic"
    clip_dir: Optional[str] = None
    head_path: Optional[str] = None
    min_aesthetic: Optional[float] = 4.3
    ocr: bool = True
    ocr_model: Optional[str] = None  # a PP-OCR detection ONNX file; None: rapidocr's packaged one
    max_text_coverage: Optional[float] = 0.02
    # The detector's box score cut-off. rapidocr's 0.5 reads fine-grained texture and filled
    # rectangles as text; burnt-in text scores above 0.8 (measured on the demo videos).
    ocr_box_thresh: float = 0.7
    # A detected box counts as text only when the recogniser reads two or more letters or
    # digits in it with at least this confidence (plain shapes read as symbols or nothing).
    ocr_text_score: float = 0.5
    motion: Literal["farneback", "raft", "none"] = "farneback"
    raft_weights: Optional[str] = None
    motion_fps: float = 4.0  # frames per second compared by the optical flow
    min_motion: Optional[float] = 0.3
    max_motion: Optional[float] = 20.0

    def problems(self) -> Iterator[Problem]:
        if self.keyframes < 1:
            yield "keyframes", f"must be >= 1, got {self.keyframes}"
        if self.aesthetic == "laion":
            for name in ("clip_dir", "head_path"):
                if not getattr(self, name):
                    yield name, "aesthetic: laion needs it (a local CLIP directory / head file)"
        if self.aesthetic == "none" and self.min_aesthetic is not None:
            yield "min_aesthetic", "aesthetic: none gives no score to filter on (set it to null)"
        yield from _absent(self, "clip_dir", "head_path", "raft_weights", "ocr_model")
        if self.motion == "raft" and not self.raft_weights:
            yield "raft_weights", "motion: raft needs a local weights file"
        if self.motion == "none" and (self.min_motion is not None or self.max_motion is not None):
            yield "min_motion", "motion: none gives no score to filter on (set min/max to null)"
        if self.motion_fps <= 0:
            yield "motion_fps", f"must be > 0, got {self.motion_fps}"
        if not 0 < self.ocr_box_thresh < 1:
            yield "ocr_box_thresh", f"must be in (0, 1), got {self.ocr_box_thresh}"
        if not 0 <= self.ocr_text_score <= 1:
            yield "ocr_text_score", f"must be in [0, 1], got {self.ocr_text_score}"
        if self.max_text_coverage is not None and not 0 <= self.max_text_coverage <= 1:
            yield "max_text_coverage", f"must be in [0, 1], got {self.max_text_coverage}"
        if (self.min_motion is not None and self.max_motion is not None
                and self.max_motion < self.min_motion):
            yield "max_motion", f"{self.max_motion} is below min_motion {self.min_motion}"


@dataclass
class DedupConfig:
    """Perceptual-hash deduplication within a source: of clips whose hashes differ in at most
    `max_distance` of 64 bits, the one with the higher aesthetic score stays."""

    enabled: bool = True
    max_distance: int = 6

    def problems(self) -> Iterator[Problem]:
        if not 0 <= self.max_distance <= 64:
            yield "max_distance", f"must be in 0..64, got {self.max_distance}"


@dataclass
class CaptionConfig:
    """Where a clip's caption comes from. Sources, in priority order: `existing` (the input
    list's caption, or the timed caption that covers the clip) and `model` (an image-to-text model
    from `model_dir`, run on keyframes). `first` takes the first that has one; `join` joins them."""

    sources: list[str] = field(default_factory=lambda: ["existing", "model"])
    strategy: Literal["first", "join"] = "first"
    model_dir: Optional[str] = None
    max_new_tokens: int = 30
    # `megagoku train` appends scores.motion to the caption itself (data/files.py): turn this on
    # only for a manifest that another trainer reads.
    append_motion: bool = False

    def problems(self) -> Iterator[Problem]:
        unknown = [s for s in self.sources if s not in ("existing", "model")]
        if unknown or not self.sources:
            yield "sources", f"expected a list of 'existing' and 'model', got {self.sources}"
        if self.sources == ["model"] and not self.model_dir:
            yield "model_dir", "sources: [model] needs a local captioning model directory"
        yield from _absent(self, "model_dir")
        if self.max_new_tokens < 1:
            yield "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}"


@dataclass
class BalanceConfig:
    """Category tags and resampling towards a target distribution (Goku: a classifier tags
    clips, over-represented subcategories are downsampled, under-represented ones upsampled)."""

    enabled: bool = False  # needs categories
    # name -> description (the zero-shot classifier compares captions with the descriptions)
    categories: dict[str, str] = field(default_factory=dict)
    # tags: the first of the record's tags that is a category; zero_shot: a sentence encoder
    # (model_dir, or the packaged all-MiniLM-L6-v2) compares the caption with each description.
    classifier: Literal["tags", "zero_shot"] = "tags"
    model_dir: Optional[str] = None
    target: Union[Literal["uniform"], dict[str, float]] = "uniform"
    max_weight: float = 10.0
    # resample: repeat or drop records (the manifest trains as it is); weight: keep every record
    # once and write scores.sample_weight.
    mode: Literal["resample", "weight"] = "resample"
    seed: int = 0

    def problems(self) -> Iterator[Problem]:
        if self.enabled and not self.categories:
            yield "categories", "balancing needs categories (name: description), or enabled: false"
        if isinstance(self.target, dict):
            if any(v < 0 for v in self.target.values()) or not sum(self.target.values()) > 0:
                yield "target", "fractions must be >= 0 and not all 0"
        yield from _absent(self, "model_dir")
        if self.max_weight < 1:
            yield "max_weight", f"must be >= 1, got {self.max_weight}"


@dataclass
class CurateConfig:
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    workers: int = 1  # processes scoring files in parallel (one model copy each)
    device: str = "cpu"  # for the model backends

    def problems(self) -> Iterator[Problem]:
        if self.workers < 1:
            yield "workers", f"must be >= 1, got {self.workers}"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "categories":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The file's mapping over its `base:` chain (relative to the file, or to configs/curate/)."""
    if path in seen:
        raise ConfigError(f"{path}: base: the chain of bases loops")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    for candidate in (path.parent / base, CONFIGS_DIR / "curate" / base):
        if candidate.is_file():
            return _merge(_with_bases(candidate.resolve(), (*seen, path)), data)
    raise ConfigError(f"{path}: base: no such file {base!r}")


def load_curate_config(path: str | Path | None, overrides: Iterable[str] = ()) -> CurateConfig:
    """Load (with `base:`), override (`--set filter.min_aesthetic=4.5`) and validate."""
    data = {} if path is None else _with_bases(Path(path).resolve())
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    return config_from_dict(CurateConfig, data, str(path or "<defaults>"))
