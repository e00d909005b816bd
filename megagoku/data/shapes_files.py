"""The built-in moving-shapes data as real files: clips alternately as VP9 WebM and H.264 MP4
(the two decoder paths on a CPU: DALI and PyAV), images as PNG, and a manifest.jsonl, so that
the file-based data path runs on the embedded default and in tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from megagoku.config.schema import DataConfig
from megagoku.data.manifest import MediaRecord, write_manifest
from megagoku.data.shapes import ShapesDataset
from megagoku.data.video_io import encode_video, to_uint8_frames

CLIP_SUFFIXES = (".webm", ".mp4")
CODEC_TAGS = {".webm": "vp9", ".mp4": "h264", ".png": "png"}


def write_shapes_files(out: str | Path, cfg: DataConfig, count: int, fps: int = 8,
                       split: str = "train") -> Path:
    """Samples 0 .. count-1 of the shapes set written under `out`; returns the manifest's path."""
    out = Path(out)
    dataset = ShapesDataset(cfg, split)
    records, clips = [], 0
    for index in range(count):
        sample = dataset[index]
        frames = to_uint8_frames(sample.pixels)
        t, h, w, _ = frames.shape
        if sample.kind == "image":
            path = out / "images" / f"{index:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frames[0]).save(path)
        else:
            path = out / "clips" / f"{index:06d}{CLIP_SUFFIXES[clips % 2]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_video(path, frames, fps)
            clips += 1
        if sample.kind == "video":  # encode_video pads odd sides to even (yuv420p)
            h, w = h + h % 2, w + w % 2
        records.append(MediaRecord(path.resolve(), sample.caption, sample.kind, w, h, t,
                                   float(fps) if sample.kind == "video" else 0.0,
                                   tags=(CODEC_TAGS[path.suffix],)))
    return write_manifest(records, out / "manifest.jsonl")
