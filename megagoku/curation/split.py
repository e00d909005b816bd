"""Cutting a source video into single-shot clips (Goku §4): a coarse split at the hard cuts
PySceneDetect's content detector finds, then a fine split wherever the features of adjacent
frames sampled at `sample_fps` are less similar than `similarity` (this catches the gradual
transitions and fast content changes the detector misses), then clips longer than
`max_clip_seconds` are cut into equal pieces and those shorter than `min_clip_seconds` dropped.

A fine cut also needs the frames' colours to have changed: the colour histograms of the two
samples (8 bins a channel) must differ by at least `min_colour_change` (total variation: the
share of pixels whose colour moved to another bin). Features compare layout, so an object
moving across a plain ground in one shot looked like a new scene every second (the offline
thumbnail features of a dark square on light grey: similarity ~0 a second apart), and a shot
was cut into pieces too short to keep; its histogram does not change (~0.002), while a
crossfade's does (0.45-0.6 a second apart on the demo videos; a pan over a texture ~0.1).
This holds whatever the embedder (DINOv2 included): a moving object never splits a shot. What
it gives up: a gradual transition between two shots of the same palette is not cut (a hard cut
between them still is, by the detector).

The source is decoded twice: once to detect (every frame through the detector, and the sampled
frames kept at a small size for the features), once to write the clips, frame-accurately
re-encoded. No clip is held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from megagoku.config.curate import SplitConfig
from megagoku.curation.media import ClipWriter, iter_frames

FEATURE_SIDE = 224  # sampled frames are kept at this short side: enough for DINOv2 and CLIP


@dataclass(frozen=True)
class Segment:
    start: float  # seconds, inclusive
    end: float  # seconds, exclusive

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _small(frame: np.ndarray) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    scale = FEATURE_SIDE / min(h, w)
    if scale >= 1:
        return frame
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def detect(path: Path, fps: float, cfg: SplitConfig):
    """One pass: (hard-cut times, sampled times, sampled frames, duration)."""
    from scenedetect import ContentDetector, FrameTimecode

    # min_scene_len in frames: shorter scenes could not make a clip anyway.
    detector = ContentDetector(threshold=cfg.detector_threshold,
                               min_scene_len=max(1, int(cfg.min_clip_seconds * fps / 2)))
    cuts, times, samples = [], [], []
    index, last = 0, 0.0
    for index, (t, frame) in enumerate(iter_frames(path)):
        found = detector.process_frame(FrameTimecode(index, fps), frame[..., ::-1])
        cuts.extend(c.frame_num / fps for c in found)
        if not times or t >= times[-1] + 1 / cfg.sample_fps - 1e-6:
            times.append(t)
            samples.append(_small(frame))
        last = t
    duration = last + 1 / fps
    return sorted(set(cuts)), np.asarray(times), samples, duration


def colour_histogram(frame: np.ndarray, bins: int = 8) -> np.ndarray:
    """(bins^3,) the share of the frame's pixels in each RGB colour bin."""
    import cv2

    hist = cv2.calcHist([np.ascontiguousarray(frame)], [0, 1, 2], None, [bins] * 3,
                        [0, 256] * 3).ravel()
    return hist / max(1.0, float(hist.sum()))


def colour_change(samples: list[np.ndarray]) -> np.ndarray:
    """(T-1,) total variation between the colour histograms of adjacent samples, in [0, 1]."""
    hists = [colour_histogram(s) for s in samples]
    return np.array([0.5 * float(np.abs(a - b).sum()) for a, b in zip(hists, hists[1:])],
                    np.float32)


def fine_cuts(times: np.ndarray, similarity: np.ndarray, threshold: float,
              change: Optional[np.ndarray] = None, min_change: float = 0.0) -> list[float]:
    """A cut halfway between each pair of adjacent samples less similar than `threshold`
    (and, given `change`, whose colours changed by at least `min_change`)."""
    cut = similarity < threshold
    if change is not None:
        cut &= change >= min_change
    return [float((times[i] + times[i + 1]) / 2) for i in np.flatnonzero(cut)]


def segments(boundaries: list[float], duration: float, cfg: SplitConfig) -> tuple[list[Segment],
                                                                                     list[Segment]]:
    """(kept, too short): the spans between boundaries, the long ones cut into equal pieces."""
    edges = [0.0] + sorted(b for b in set(boundaries) if 0 < b < duration) + [duration]
    kept, short = [], []
    for a, b in zip(edges, edges[1:]):
        if b - a < cfg.min_clip_seconds - 1e-6:
            short.append(Segment(a, b))
            continue
        pieces = math.ceil((b - a) / cfg.max_clip_seconds - 1e-9)
        step = (b - a) / pieces
        kept.extend(Segment(a + i * step, a + (i + 1) * step) for i in range(pieces))
    return kept, short


def split_points(path: Path, fps: float, cfg: SplitConfig, embedder) -> tuple[list[float],
                                                                               list[float], float]:
    """(hard cuts, fine cuts, duration) of one video."""
    from megagoku.curation.features import adjacent_similarity

    cuts, times, samples, duration = detect(path, fps, cfg)
    fine: list[float] = []
    # Compare samples within a coarse scene only: across a hard cut they differ by definition.
    scene_edges = [0.0] + cuts + [duration]
    for a, b in zip(scene_edges, scene_edges[1:]):
        inside = [i for i, t in enumerate(times) if a - 1e-6 <= t < b - 1e-6]
        if len(inside) < 2:
            continue
        frames = [samples[i] for i in inside]
        embeddings = embedder.embed(np.stack(frames))
        fine.extend(fine_cuts(times[inside], adjacent_similarity(embeddings), cfg.similarity,
                              colour_change(frames), cfg.min_colour_change))
    return cuts, fine, duration


def write_clips(path: Path, fps: float, clips: list[Segment], paths: list[Path]) -> list[int]:
    """Encode each segment of the source into its file in one decoding pass; returns the frame
    count written to each."""
    order = sorted(range(len(clips)), key=lambda i: clips[i].start)
    counts = [0] * len(clips)
    writer, current, position = None, -1, 0
    try:
        for t, frame in iter_frames(path):
            while position < len(order) and t >= clips[order[position]].end - 1e-6:
                if writer is not None and current == order[position]:
                    writer.close()
                    writer = None
                position += 1
            if position >= len(order):
                break
            i = order[position]
            if t < clips[i].start - 1e-6:
                continue
            if writer is None or current != i:
                h, w = frame.shape[:2]
                writer, current = ClipWriter(paths[i], fps, w, h), i
            writer.write(frame)
            counts[i] += 1
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return counts
