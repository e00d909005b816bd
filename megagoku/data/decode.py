"""Decoding images and clips into pixels at the sample's target size, length and frame rate.

Video goes through NVIDIA DALI where it can: on a GPU its decoder handles every common codec;
on the CPU, DALI's decoder handles VP9, VP8 and MJPEG only (H.264, HEVC and AV1 fail there), so
those files go through PyAV. The choice is made per file from its codec (`choose_backend`) and
logged at debug level; `DecodeStats` counts it. Images go through Pillow.

Every failure a file can cause (missing, zero length, truncated, unknown codec, no video stream,
fewer frames than the sample needs) is a `DecodeError` naming the file and the reason; the
reader (`MediaReader`) skips that sample with one warning and counts it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Backend = Literal["auto", "dali", "pyav"]
# What DALI's CPU video decoder accepts (FFmpeg codec names).
DALI_CPU_CODECS = ("vp9", "vp8", "mjpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DecodeError(Exception):
    """A file that cannot give the sample asked of it. `reason` is the counter it is skipped
    under: missing, empty, unreadable, no_video, undecodable, too_short, bad_image."""

    def __init__(self, path: Path, reason: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """What a sample becomes: `frames` frames sampled at `fps` (None: the file's rate), each
    resized so that it covers height x width and centre-cropped to it."""

    height: int
    width: int
    frames: int = 1
    fps: Optional[float] = None


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    frames: int
    fps: float
    duration: float = 0.0  # seconds
    bitrate_kbps: float = 0.0


def probe(path: Path) -> VideoInfo:
    """Codec, size, frame count, rate, duration and bitrate of a video file's first video
    stream, from the container (nothing is decoded)."""
    import av

    check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(path, "no_video", "no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = stream.frames / fps if fps and stream.frames else 0.0
            frames = stream.frames or int(round(duration * fps))
            bitrate = (container.bit_rate or stream.bit_rate or 0) / 1000
            if not bitrate and duration > 0:  # some containers leave it out: size over time
                bitrate = path.stat().st_size * 8 / 1000 / duration
            return VideoInfo(stream.codec_context.name, stream.codec_context.width,
                             stream.codec_context.height, int(frames), fps, duration, bitrate)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many types for a broken file
        raise DecodeError(path, "unreadable", f"unreadable ({type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=None)
def dali_missing() -> Optional[str]:
    """Why DALI cannot be used here (not installed), or None; said once in the log."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        log.warning("NVIDIA DALI is not installed (%s): every video decodes through PyAV", e)
        return str(e)
    return None


def choose_backend(codec: str, device: str = "cpu") -> Literal["dali", "pyav"]:
    """DALI when it is installed and can decode this codec on this device, else PyAV."""
    if dali_missing() is not None:
        return "pyav"
    if device == "cuda":
        return "dali"
    return "dali" if codec in DALI_CPU_CODECS else "pyav"


def check_file(path: Path) -> None:
    """A DecodeError for a missing or empty file, before any decoder sees it."""
    if not path.is_file():
        raise DecodeError(path, "missing", "no such file")
    if path.stat().st_size == 0:
        raise DecodeError(path, "empty", "empty file")


def decode_pyav(path: Path, limit: Optional[int] = None) -> np.ndarray:
    """The first `limit` frames (all when None), (T, H, W, 3) uint8 RGB. Decoding stops there: a
    sample needs the first seconds of a clip, not the whole file."""
    import av

    check_file(path)
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if limit is not None and len(frames) >= limit:
                    break
    except Exception as e:  # noqa: BLE001
        raise DecodeError(path, "undecodable",
                          f"PyAV could not decode it ({type(e).__name__}: {e})") from None
    if not frames:
        raise DecodeError(path, "undecodable", "no frames decoded")
    return np.stack(frames)


class DaliDecoder:
    """A DALI pipeline built once and fed one encoded file per run (`fn.decoders.video`)."""

    def __init__(self, device: str = "cpu", threads: int = 1):
        from nvidia.dali import fn, pipeline_def, types

        gpu = device == "cuda"
        device_id = torch.cuda.current_device() if gpu else None  # this rank's GPU

        @pipeline_def(batch_size=1, num_threads=threads, device_id=device_id,
                      prefetch_queue_depth=1)
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            return fn.decoders.video(encoded, device="mixed" if gpu else "cpu")

        self.gpu = gpu
        self.threads = threads
        self.pipe = pipeline()
        self.pipe.build()

    def __call__(self, path: Path) -> np.ndarray:
        check_file(path)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise DecodeError(path, "unreadable", f"unreadable ({e})") from None
        try:
            self.pipe.feed_input("encoded", [data])
            (out,) = self.pipe.run()
        except Exception as e:  # noqa: BLE001 - DALI reports decode failures as RuntimeError
            # A failed run leaves the pipeline unusable: build a fresh one for the next file.
            self.__init__("cuda" if self.gpu else "cpu", self.threads)
            raise DecodeError(path, "undecodable",
                              f"DALI could not decode it ({dali_reason(e)})") from None
        frames = np.asarray(out.as_cpu()[0] if self.gpu else out[0])
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise DecodeError(path, "undecodable", "no frames decoded")
        return frames


def dali_reason(error: Exception) -> str:
    """The informative line of a DALI pipeline error, which wraps it in "Critical error in
    pipeline:", the operator's traceback and "Current pipeline object is no longer valid."."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:  # the operator's own message follows its traceback
        return lines[lines.index("encountered:") + 1]
    for line in lines:
        if line.startswith("[") and "] " in line:  # "[file.cc:253] Codec 27 (h264) is not ..."
            return line.split("] ", 1)[1]
    wrapping = ("Critical error", "Error in", "which was used", "File ", "encountered:",
                "Current pipeline object")
    informative = [line for line in lines if not line.startswith(wrapping)]
    return (informative or lines or [type(error).__name__])[0]


def _frame_step(source_fps: float, target: Target) -> float:
    return 1.0 if not target.fps or not source_fps else source_fps / target.fps


def frames_needed(source_fps: float, target: Target) -> int:
    """How many frames from the start a sample of `target` reads."""
    return math.floor((target.frames - 1) * _frame_step(source_fps, target) + 1e-6) + 1


def frame_indices(path: Path, available: int, source_fps: float, target: Target) -> np.ndarray:
    """`target.frames` indices from the start, stepping at target.fps (the source's by default)."""
    step = _frame_step(source_fps, target)
    indices = np.floor(np.arange(target.frames) * step + 1e-6).astype(np.int64)
    if indices[-1] >= available:
        need = frames_needed(source_fps, target)
        raise DecodeError(path, "too_short", f"has {available} frames, the sample needs {need} "
                                             f"({target.frames} at {target.fps or source_fps:g} fps)")
    return indices


def to_pixels(frames: np.ndarray, target: Target) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, target.height, target.width) float32 in [-1, 1]: resized
    (area-preserving antialias) to cover the target, then centre-cropped."""
    # DALI hands out read-only arrays: copied only then.
    video = torch.from_numpy(np.require(frames, requirements=["C", "W"])).permute(0, 3, 1, 2).float()
    _, _, h, w = video.shape
    scale = max(target.height / h, target.width / w)
    size = (max(target.height, round(h * scale)), max(target.width, round(w * scale)))
    if size != (h, w):
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True,
                              align_corners=False)
    top = (size[0] - target.height) // 2
    left = (size[1] - target.width) // 2
    video = video[:, :, top:top + target.height, left:left + target.width]
    return (video / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


def decode_image(path: Path, target: Target) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    check_file(path)
    try:
        with Image.open(path) as image:
            frame = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
        raise DecodeError(path, "bad_image", f"not a readable image ({e})") from None
    return to_pixels(frame[None], target)


@dataclass
class DecodeStats:
    """What the reader did, for the training metrics."""

    decoded: Counter = field(default_factory=Counter)  # backend -> files
    skipped: Counter = field(default_factory=Counter)  # reason -> files

    def as_metrics(self) -> dict[str, int]:
        out = {f"data/decoded_{k}": v for k, v in self.decoded.items()}
        out.update({f"data/skipped_{k}": v for k, v in self.skipped.items()})
        out["data/skipped"] = sum(self.skipped.values())
        return out


class MediaReader:
    """Decodes image and video files into pixels, choosing the decoder per file, skipping (with
    one warning each, and a count) the files that cannot be decoded."""

    def __init__(self, device: str = "cpu", backend: Backend = "auto"):
        # Asked for by name, DALI must be there: refused before any work, not per file.
        if backend == "dali" and dali_missing() is not None:
            raise ValueError(f"data.decode_backend: dali, but NVIDIA DALI is not installed "
                             f"({dali_missing()}); use auto or pyav")
        self.device = device
        self.backend = backend
        self.stats = DecodeStats()
        self._dali: Optional[DaliDecoder] = None

    def _decode_video(self, path: Path, target: Target) -> torch.Tensor:
        info = probe(path)
        backend = self.backend if self.backend != "auto" else choose_backend(info.codec, self.device)
        if backend == "dali" and self.device != "cuda" and info.codec not in DALI_CPU_CODECS:
            raise DecodeError(path, "undecodable",
                              f"DALI cannot decode {info.codec} on the CPU (it decodes "
                              f"{', '.join(DALI_CPU_CODECS)}); use backend auto or pyav")
        log.debug("decode %s: %s (codec %s)", path, backend, info.codec)
        if backend == "dali":
            if self._dali is None:
                self._dali = DaliDecoder(self.device)
            frames = self._dali(path)
        else:
            frames = decode_pyav(path, limit=frames_needed(info.fps, target))
        indices = frame_indices(path, frames.shape[0], info.fps, target)
        self.stats.decoded[backend] += 1
        return to_pixels(frames[indices], target)

    def read(self, path: str | Path, kind: str, target: Target) -> Optional[torch.Tensor]:
        """(3, T, H, W) in [-1, 1], or None (warned and counted) for a file that cannot serve."""
        path = Path(path)
        try:
            if kind == "image" or path.suffix.lower() in IMAGE_SUFFIXES:
                pixels = decode_image(path, target)
                self.stats.decoded["pillow"] += 1
                return pixels
            return self._decode_video(path, target)
        except DecodeError as e:
            self.stats.skipped[e.reason] += 1
            log.warning("skipping %s", e)
            return None
