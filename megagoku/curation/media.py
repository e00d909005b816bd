"""Reading raw media for curation: container metadata, frames of a time range, and clip files.

Everything goes through PyAV (its bundled FFmpeg reads every common codec on the CPU) and Pillow
for images. A file that cannot be read raises `DecodeError` (megagoku.data.decode) with a reason
the stage counts it under; no file stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from megagoku.data.decode import IMAGE_SUFFIXES, DecodeError, check_file
from megagoku.data.decode import probe as decode_probe

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif")


def check_frame(frame, who: str) -> np.ndarray:
    """One uint8 RGB frame (H, W, 3), or a ValueError saying what `who` got instead."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
            or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        got = (f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray)
               else type(frame).__name__)
        raise ValueError(f"{who} needs one uint8 RGB frame (H, W, 3); got {got}")
    return frame


def media_kind(path: Path) -> Optional[str]:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


@dataclass(frozen=True)
class MediaInfo:
    kind: str
    width: int
    height: int
    fps: float = 0.0
    duration: float = 0.0  # seconds
    bitrate_kbps: float = 0.0
    codec: str = ""


def probe(path: Path) -> MediaInfo:
    """Size, rate, duration, bitrate and codec from the container, without decoding frames."""
    check_file(path)
    kind = media_kind(path)
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.verify()
                return MediaInfo("image", image.width, image.height)
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for a broken file
            raise DecodeError(path, "bad_image", f"unreadable image ({e})") from None
    info = decode_probe(path)
    return MediaInfo("video", info.width, info.height, info.fps, info.duration,
                     info.bitrate_kbps, info.codec)


def iter_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, RGB frame) for every frame of a video, decoded once, in order."""
    import av

    check_file(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else frame.time
                yield t, frame.to_ndarray(format="rgb24")
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DecodeError(path, "undecodable",
                          f"PyAV could not decode it ({type(e).__name__}: {e})") from None


def read_image(path: Path) -> np.ndarray:
    from PIL import Image

    check_file(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise DecodeError(path, "bad_image", f"unreadable image ({e})") from None


def read_frames(path: Path, fps: Optional[float] = None, count: Optional[int] = None,
                start: float = 0.0, end: float = float("inf")) -> tuple[np.ndarray, np.ndarray]:
    """Frames of [start, end) as (T, H, W, 3) uint8 and their times: every frame, or the first
    frame at or after each tick of `fps`, or `count` frames spread evenly (a clip's keyframes).
    An image is one frame at time 0."""
    if media_kind(path) == "image":
        return read_image(path)[None], np.zeros(1)
    times, frames = [], []
    for t, frame in iter_frames(path):
        if t < start - 1e-6:
            continue
        if t >= end - 1e-6:
            break
        if fps is None or not times or t >= times[-1] + 1 / fps - 1e-6:
            times.append(t)
            frames.append(frame)
    if not frames:
        raise DecodeError(path, "undecodable", f"no frames in [{start:.2f}, {end:.2f}) s")
    if count is not None and len(frames) > count:
        keep = np.linspace(0, len(frames) - 1, count).round().astype(int)
        frames, times = [frames[i] for i in keep], [times[i] for i in keep]
    return np.stack(frames), np.asarray(times)


ENCODERS = {".mp4": ("libx264", {"crf": "20", "preset": "veryfast"}),
            ".webm": ("libvpx-vp9", {"crf": "30", "b": "0", "deadline": "realtime"})}


class ClipWriter:
    """Encodes frames into one file (H.264 .mp4 or VP9 .webm) as they arrive, so that a long
    source is cut into clips in a single decoding pass without holding a clip in memory. Written
    under a temporary name and renamed on close: a crash never leaves half a clip behind."""

    def __init__(self, path: Path, fps: float, width: int, height: int):
        import av

        self.path = path
        self.tmp = path.with_name(path.stem + ".part" + path.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        encoder, options = ENCODERS[path.suffix.lower()]
        self.container = av.open(str(self.tmp), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(encoder, rate=rate)
        self.time_base = 1 / rate
        # yuv420p needs even sides: an odd row or column is dropped.
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = dict(options)
        # One encoder thread: the pipeline runs a process per core already. (Even so, x264 here
        # does not give the same bytes every time: two encodes of the same frames differ by a
        # few levels in a few pixels. Scores of a clip are reproducible to ~1e-3, not exactly.)
        self.stream.codec_context.thread_count = 1
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        frame = frame[: self.stream.height, : self.stream.width]
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames  # in 1/fps units: explicit, so the encoder never guesses
        video_frame.time_base = self.time_base
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        self.container.close()
        self.tmp.unlink(missing_ok=True)


def at_rate(frames: Iterator[tuple[float, np.ndarray]], fps: float) -> Iterator[np.ndarray]:
    """The frames of a (time, frame) stream played at `fps`: each frame is repeated or skipped
    so that every tick of the new rate shows the frame current at that time, up to the end of the
    last frame (which lasts as long as the one before it)."""
    tick, previous, last_t, step = 0.0, None, 0.0, 1 / fps
    for t, frame in frames:
        if previous is None:
            tick = t
        else:
            step = t - last_t
        while previous is not None and tick < t - 1e-6:
            yield previous
            tick += 1 / fps
        previous, last_t = frame, t
    while previous is not None and tick < last_t + step - 1e-6:
        yield previous
        tick += 1 / fps
