"""Generated media for the decoding tests: textured moving clips (so that resizing and codecs have
detail to get wrong), with a chosen keyframe interval, display rotation or container."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

CODECS = {".mp4": "libx264", ".ts": "libx264", ".webm": "libvpx-vp9", ".mkv": "libvpx-vp9"}


def textured(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth colour texture panning right, a square crossing it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width + 2 * frames].astype(np.float32)
    texture = np.zeros(y.shape + (3,), np.float32)
    for c in range(3):
        fy, fx = rng.uniform(0.03, 0.09, size=2)
        texture[..., c] = 128 + 60 * np.sin(fy * y + fx * x + rng.uniform(0, 6))
    out = []
    side = max(2, min(height, width) // 4)
    for t in range(frames):
        frame = texture[:, 2 * t:2 * t + width].copy()
        left = int((width - side) * t / max(1, frames - 1))
        top = (height - side) // 2
        frame[top:top + side, left:left + side] = (230, 40, 40)
        out.append(frame)
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def write_clip(path: Path, frames: np.ndarray, fps: int = 8, gop: Optional[int] = None,
               rotation: Optional[int] = None, quality: str = "12") -> Path:
    """Encode (T, H, W, 3) uint8 by the suffix's codec; `gop`: keyframe interval; `rotation`:
    the display matrix, degrees counterclockwise."""
    import av

    path = Path(path)
    codec = CODECS[path.suffix]
    options = {"crf": quality} if codec == "libx264" else {"crf": quality, "b": "0",
                                                            "deadline": "realtime",
                                                            "cpu-used": "8"}
    if gop:
        options["g"] = str(gop)
        if codec == "libx264":
            options["keyint_min"] = str(gop)
            options["sc_threshold"] = "0"
    fmt = "mpegts" if path.suffix == ".ts" else None
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
