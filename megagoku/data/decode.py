"""Decoding images and clips into pixels at the sample's target size, length and frame rate.

Video goes through NVIDIA DALI where it can: on a GPU its decoder handles every common codec;
on the CPU, DALI's decoder handles VP9, VP8 and MJPEG only (H.264, HEVC and AV1 fail there), so
those files go through PyAV. The choice is made per file from its codec (`choose_backend`) and
logged at debug level; `DecodeStats` counts it. Images go through Pillow.

Both video paths decode only the frames the sample uses and scale them in the decoder, before any
float exists (`pyav_clip.py`, `dali_clips.py`); a plan shared by every decoder (`geometry.py`)
puts the pixels in the same place and turns them upright (display matrix, EXIF orientation).
`decode_pyav` and `to_pixels` are the reference they are tested against: every frame at source
size, then float resizing.

Every failure a file can cause (missing, zero length, truncated, unknown codec, no video stream,
an image listed as a video, fewer frames than the sample needs, and anything else that raises
while it is read) is a `DecodeError` naming the file and the reason; the reader (`MediaReader`)
skips that sample with one warning and counts it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from megagoku.data.errors import DecodeError
from megagoku.data.geometry import plan_frame
from megagoku.data.pyav_clip import decode_clip

log = logging.getLogger(__name__)

Backend = Literal["auto", "dali", "pyav"]
# What DALI's CPU video decoder accepts (FFmpeg codec names).
DALI_CPU_CODECS = ("vp9", "vp8", "mjpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# FFmpeg opens a still image as a one-frame "video" through these demuxers (image2, png_pipe,
# jpeg_pipe, ...) and codecs: such a file listed as a video is refused, not trained as 1 frame.
IMAGE_CODECS = ("png", "bmp", "webp", "tiff", "gif")

__all__ = ["DecodeError", "Target", "VideoInfo", "probe", "open_video", "describe", "MediaReader",
           "DecodeStats", "choose_backend", "dali_missing", "check_file", "decode_pyav",
           "decode_image", "frame_indices", "frames_needed", "to_pixels", "to_unit_range"]


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
    container: str = ""  # FFmpeg's demuxer name (e.g. "mov,mp4,m4a,3gp,3g2,mj2", "png_pipe")
    rotation: int = 0  # display matrix, degrees counterclockwise (read when asked: it decodes)
    counted: bool = False  # `frames` is the container's own count, not duration x rate

    @property
    def is_image(self) -> bool:
        return (self.codec in IMAGE_CODECS or self.container == "image2"
                or self.container.endswith("_pipe"))


def probe(path: Path, rotation: bool = False) -> VideoInfo:
    """Codec, size, frame count, rate, duration and bitrate of a video file's first video
    stream, from the container; with `rotation`, also its display matrix, which FFmpeg hands out
    with decoded frames only (the first frame is decoded for it)."""
    container = open_video(path)
    try:
        return describe(path, container, rotation)
    finally:
        container.close()


def open_video(path: Path):
    """The file opened by PyAV (its streams found: `avformat_find_stream_info`), or a
    DecodeError; the caller closes it."""
    import av

    check_file(path)
    try:
        return av.open(str(path))
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many types for a broken file
        raise DecodeError(path, "unreadable", f"unreadable ({type(e).__name__}: {e})") from None


def describe(path: Path, container, rotation: bool = False) -> VideoInfo:
    """`probe` of a file `open_video` opened. Without `rotation` nothing is decoded, so the
    container can go on to `decode_clip`; with it, the first frame is."""
    import av

    try:
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
        turned = 0
        if rotation:
            first = next(iter(container.decode(stream)), None)
            turned = int(getattr(first, "rotation", 0) or 0) if first is not None else 0
        return VideoInfo(stream.codec_context.name, stream.codec_context.width,
                         stream.codec_context.height, int(frames), fps, duration, bitrate,
                         container.format.name, turned, bool(stream.frames))
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
    """The reference decode: the first `limit` frames (all when None) at source size, (T, H, W, 3)
    uint8 RGB, as stored (no display matrix). Training reads through `decode_clip`, which scales
    in the decoder; tests and `megagoku bench data` hold it against this."""
    import av

    check_file(path)
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if limit is not None and len(frames) >= limit:
                    break
        if not frames:
            raise DecodeError(path, "undecodable", "no frames decoded")
        return np.stack(frames)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg's errors, and frames of changing size
        raise DecodeError(path, "undecodable",
                          f"PyAV could not decode it ({type(e).__name__}: {e})") from None


def _frame_step(source_fps: float, target: Target) -> float:
    return 1.0 if not target.fps or not source_fps else source_fps / target.fps


def frames_needed(source_fps: float, target: Target) -> int:
    """How many frames from the start a sample of `target` reads."""
    return math.floor((target.frames - 1) * _frame_step(source_fps, target) + 1e-6) + 1


def frame_indices(path: Path, available: int, source_fps: float, target: Target) -> np.ndarray:
    """`target.frames` indices from the start, stepping at target.fps (the source's by default).
    `available` 0: the container does not say; the decoder finds out."""
    step = _frame_step(source_fps, target)
    indices = np.floor(np.arange(target.frames) * step + 1e-6).astype(np.int64)
    if available and indices[-1] >= available:
        need = frames_needed(source_fps, target)
        raise DecodeError(path, "too_short", f"has {available} frames, the sample needs {need} "
                                             f"({target.frames} at {target.fps or source_fps:g} fps)")
    return indices


def to_unit_range(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1]."""
    # DALI hands out read-only arrays: copied only then.
    video = torch.from_numpy(np.require(frames, requirements=["C", "W"])).permute(3, 0, 1, 2)
    return (video.float() / 127.5 - 1.0).clamp(-1, 1).contiguous()


def to_pixels(frames: np.ndarray, target: Target) -> torch.Tensor:
    """The reference resize: (T, H, W, 3) uint8 at source size -> (3, T, target.height,
    target.width) float32 in [-1, 1], resized as floats (area-preserving antialias) to cover the
    target, then centre-cropped. Decoders resize before any float exists; this is what they are
    held to."""
    video = torch.from_numpy(np.require(frames, requirements=["C", "W"]))
    video = video.permute(0, 3, 1, 2).float()
    _, _, h, w = video.shape
    plan = plan_frame(h, w, target.height, target.width)
    if plan.scaled != (h, w):
        video = F.interpolate(video, size=plan.scaled, mode="bilinear", antialias=True,
                              align_corners=False)
    top, left, th, tw = plan.crop
    video = video[:, :, top:top + th, left:left + tw]
    return (video / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


def _eight_bit(image):
    """Pillow image -> 8 bits per channel. Pillow's convert("RGB") clips 16-bit grey ("I;16",
    "I") to white above 255 instead of scaling it: scaled here (65535 -> 255)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":  # floats: taken as [0, 1]
        values = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8), "L")
    return image


def decode_image(path: Path, target: Target) -> torch.Tensor:
    """An image as a 1-frame sample (3, 1, H, W): EXIF orientation applied, 16-bit scaled to 8,
    resized by Pillow (antialiased bilinear, like `to_pixels`) to cover the target and
    centre-cropped; a JPEG is decoded at a reduced scale when the target is much smaller."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    check_file(path)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":  # DCT scaling, never below the cover size (either way up)
                w, h = image.size
                scale = max(target.height / h, target.width / w, target.height / w,
                            target.width / h)
                if scale < 0.5:
                    image.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            image = ImageOps.exif_transpose(image)
            image = _eight_bit(image).convert("RGB")
            plan = plan_frame(image.height, image.width, target.height, target.width)
            if plan.scaled != (image.height, image.width):
                image = image.resize((plan.scaled[1], plan.scaled[0]), Image.BILINEAR)
            frame = np.asarray(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError,
            SyntaxError) as e:
        raise DecodeError(path, "bad_image", f"not a readable image ({e})") from None
    top, left, h, w = plan.crop
    return to_unit_range(frame[None, top:top + h, left:left + w])


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

    def add(self, other: "DecodeStats") -> None:
        self.decoded.update(other.decoded)
        self.skipped.update(other.skipped)

    def since(self, before: "DecodeStats") -> "DecodeStats":
        """What was counted after `before` (a copy taken earlier)."""
        return DecodeStats(self.decoded - before.decoded, self.skipped - before.skipped)

    def copy(self) -> "DecodeStats":
        return DecodeStats(Counter(self.decoded), Counter(self.skipped))


@dataclass(frozen=True)
class _Clip:
    slot: int
    path: Path
    target: Target
    info: VideoInfo  # for DALI, with the display matrix read
    indices: np.ndarray
    container: object = None  # PyAV: the file as the probe opened it, decoded from next


class MediaReader:
    """Decodes image and video files into pixels, choosing the decoder per file, skipping (with
    one warning each, and a count) the files that cannot be decoded. `read_many` hands the files
    DALI takes to its pipeline as one batch."""

    def __init__(self, device: str = "cpu", backend: Backend = "auto", dali_batch: int = 4,
                 root: Optional[str | Path] = None):
        # Asked for by name, DALI must be there: refused before any work, not per file.
        if backend == "dali" and dali_missing() is not None:
            raise ValueError(f"data.decode_backend: dali, but NVIDIA DALI is not installed "
                             f"({dali_missing()}); use auto or pyav")
        # data.root: every file read must lie inside it once links are followed (a manifest
        # from elsewhere cannot make training read ../ or a symlink out of the data).
        self.root = None if root is None else Path(os.path.realpath(root))
        if self.root is not None and not self.root.is_dir():
            raise ValueError(f"data.root: {root}: not a folder")
        self.device = device
        self.backend = backend
        self.dali_batch = dali_batch
        self.stats = DecodeStats()
        self._dali = None

    def __getstate__(self) -> dict:  # a data worker builds its own DALI pipeline
        return {**self.__dict__, "_dali": None}

    def _skip(self, error: DecodeError) -> None:
        self.stats.skipped[error.reason] += 1
        log.warning("skipping %s", error)

    def _plan_clip(self, slot: int, path: Path, target: Target) -> tuple[str, _Clip]:
        """Which backend decodes this file, and what it must deliver; DecodeError if none can.
        The file is opened once: for PyAV the open container goes on to the decode (a second
        open would repeat `avformat_find_stream_info`, 0.035-0.04 s at 1080p H.264); for DALI,
        which reads the bytes itself, it gives the display matrix and is closed."""
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise DecodeError(path, "not_video", f"listed as a video, but it is an image "
                                                 f"({path.suffix.lower()})")
        container = open_video(path)
        try:
            info = describe(path, container)
            if info.is_image:
                raise DecodeError(path, "not_video", f"listed as a video, but it is an image "
                                                     f"({info.codec} in {info.container})")
            backend = self.backend if self.backend != "auto" else choose_backend(info.codec,
                                                                                 self.device)
            if backend == "dali" and self.device != "cuda" and info.codec not in DALI_CPU_CODECS:
                raise DecodeError(path, "undecodable",
                                  f"DALI cannot decode {info.codec} on the CPU (it decodes "
                                  f"{', '.join(DALI_CPU_CODECS)}); use backend auto or pyav")
            log.debug("decode %s: %s (codec %s)", path, backend, info.codec)
            # A frame count estimated from the duration can be wrong (MPEG-TS segments joined):
            # then the decoder finds out whether the file is long enough.
            available = info.frames if info.counted else 0
            indices = frame_indices(path, available, info.fps, target)
            if backend == "dali":  # DALI does not read display matrices: the plan needs it
                info = describe(path, container, rotation=True)
                container.close()
                container = None
        except BaseException:
            if container is not None:
                container.close()
            raise
        return backend, _Clip(slot, path, target, info, indices, container)

    def _pyav(self, clip: _Clip) -> torch.Tensor:
        try:
            frames = decode_clip(clip.path, clip.indices, clip.target.height, clip.target.width,
                                 threads=torch.get_num_threads(), container=clip.container)
        finally:
            if clip.container is not None:
                clip.container.close()
        self.stats.decoded["pyav"] += 1
        return to_unit_range(frames)

    def _dali_batch(self, clips: list[_Clip], results: list) -> None:
        from megagoku.data.dali_clips import ClipRequest, DaliClipDecoder

        if self._dali is None:
            self._dali = DaliClipDecoder(self.device, batch_size=self.dali_batch)
        requests = [ClipRequest(clip.path, tuple(int(i) for i in clip.indices),
                                plan_frame(clip.info.height, clip.info.width, clip.target.height,
                                           clip.target.width, clip.info.rotation))
                    for clip in clips]
        for clip, out in zip(clips, self._dali.decode(requests)):
            if not isinstance(out, DecodeError):
                self.stats.decoded["dali"] += 1
                results[clip.slot] = to_unit_range(out)
            elif self.backend == "auto":  # e.g. a stream that changes size: PyAV copes
                log.debug("%s; trying PyAV", out)
                results[clip.slot] = self._guarded(clip.path, lambda: self._pyav(clip))
            else:
                self._skip(out)

    def _guarded(self, path: Path, read) -> Optional[torch.Tensor]:
        """read() or, for any exception, None with the file skipped under its reason."""
        try:
            return read()
        except DecodeError as e:
            self._skip(e)
        except Exception as e:  # noqa: BLE001 - one bad file must never stop training
            self._skip(DecodeError(path, "error", f"{type(e).__name__}: {e}"))
        return None

    def read_many(self, requests: Sequence[tuple[str | Path, str, Target]]
                  ) -> list[Optional[torch.Tensor]]:
        """(3, T, H, W) in [-1, 1] per (path, kind, target), or None (warned and counted) for a
        file that cannot serve. The files DALI decodes go through its pipeline together."""
        results: list[Optional[torch.Tensor]] = [None] * len(requests)
        dali: list[_Clip] = []
        for slot, (path, kind, target) in enumerate(requests):
            path = Path(path)
            if self.root is not None and not Path(os.path.realpath(path)).is_relative_to(self.root):
                self._skip(DecodeError(path, "outside_root",
                                       f"outside data.root {self.root} (links followed)"))
                continue
            if kind == "image":
                results[slot] = self._guarded(path, lambda: self._image(path, target))
                continue
            planned = self._guarded(path, lambda: self._plan_clip(slot, path, target))
            if planned is None:
                continue
            backend, clip = planned
            if backend == "dali":
                dali.append(clip)
            else:
                results[slot] = self._guarded(path, lambda: self._pyav(clip))
        if dali:
            try:
                self._dali_batch(dali, results)
            except Exception as e:  # noqa: BLE001 - e.g. DALI cannot build here at all
                for clip in dali:
                    if results[clip.slot] is None:
                        self._skip(DecodeError(clip.path, "error", f"{type(e).__name__}: {e}"))
        return results

    def _image(self, path: Path, target: Target) -> torch.Tensor:
        pixels = decode_image(path, target)
        self.stats.decoded["pillow"] += 1
        return pixels

    def read(self, path: str | Path, kind: str, target: Target) -> Optional[torch.Tensor]:
        """(3, T, H, W) in [-1, 1], or None (warned and counted) for a file that cannot serve."""
        return self.read_many([(path, kind, target)])[0]
