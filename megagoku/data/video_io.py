"""Writing videos and frames: GIF (Pillow), MP4 (H.264) or WebM (VP9) through PyAV, or PNG (one
frame, or the frames side by side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8_frames(video: torch.Tensor, upscale: int = 1) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H*upscale, W*upscale, 3) uint8, nearest-neighbour."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(1, 2, 3, 0).numpy()
    if upscale > 1:
        frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return frames


def frame_strip(frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """(T, H, W, 3) -> one (H, T*W + gaps, 3) image, frames left to right on a grey gap."""
    t, h, w, _ = frames.shape
    strip = np.full((h, t * w + (t - 1) * gap, 3), 96, dtype=np.uint8)
    for i, frame in enumerate(frames):
        strip[:, i * (w + gap): i * (w + gap) + w] = frame
    return strip


FORMATS = (".mp4", ".webm", ".gif", ".png")
# Container suffix -> (FFmpeg encoder, options). Quality high enough that a decoded flat-colour
# frame stays within a few levels of what was encoded.
ENCODERS = {".mp4": ("libx264", {"crf": "18"}), ".webm": ("libvpx-vp9", {"crf": "18", "b": "0"})}


def check_output_path(path: str | Path) -> Path:
    """Reject an unknown output format before any work is spent on the video."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--out {path}: unknown format {path.suffix!r} "
                         "(use .mp4, .webm, .gif or .png)")
    return path


def write_video(path: str | Path, video: torch.Tensor, fps: int = 8, upscale: int = 1) -> Path:
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_uint8_frames(video, upscale)
    suffix = path.suffix.lower()
    if suffix == ".png":
        image = frames[0] if len(frames) == 1 else frame_strip(frames)
        Image.fromarray(image).save(path)
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                       duration=max(1, round(1000 / fps)))
    else:
        encode_video(path, frames, fps)
    return path


def encode_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """(T, H, W, 3) uint8 -> .mp4 (H.264) or .webm (VP9), by the path's suffix."""
    import av

    encoder, options = ENCODERS[path.suffix.lower()]
    _, h, w, _ = frames.shape
    # yuv420p needs even sides: pad by one black row/column where needed.
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
