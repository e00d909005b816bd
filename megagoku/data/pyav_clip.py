"""A clip's frames through PyAV, decoding only what the sample uses.

The decoder starts at the clip's first frame (a seek to the keyframe before it when that frame is
not the file's first) and stops after the last frame the sample's stride uses. Each frame it keeps
is scaled by swscale while it is converted to RGB (`VideoFrame.reformat`: area averaging when
shrinking, bicubic when enlarging; planar RGB, which PyAV hands back in R, G, B order) straight
to the size its `FramePlan` needs, then cropped and turned upright: no full-size RGB frame, and
no float, is ever made, so a sample's memory follows its target size, not the source's. Each
frame gets its own plan, so a stream whose size changes midway (concatenated segments) still
gives frames of the target size.

The caller may hand over the container it opened to probe the file (`MediaReader`): one open and
one `avformat_find_stream_info` per sample, not two (that pass costs 0.035-0.04 s on a 1080p
H.264 file: it sets up the decoder for the full frame size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from megagoku.data.errors import DecodeError
from megagoku.data.geometry import FramePlan, crop_and_turn, plan_frame

# Deblocking (the in-loop filter) is skipped on frames no other frame references when the frame
# is shrunk at least this much on each side. Such a frame's deblocking changes only its own
# pixels (nothing is predicted from it: no drift), by a few levels at block edges that the area
# average over >= 4x4 source pixels smooths away: on the 8-s 1080p H.264 clip of `megagoku
# bench data`, 16 frames to 64x64 from frames 0, 80 and 176 gave the same distance to
# `to_pixels` to 0.001 levels (mean 1.31-1.37, p99 4.7-8.0), for ~0.01 s less per sample (~5%
# of the decode; x264's non-reference B-frames are half its frames). Skipping it on reference
# frames too ("all", ~0.03 s) drifts through the GOP: mean 3.4, p99 23 levels by frame 176,
# outside the decoders' tolerance; skipping it on every B-frame ("bidir") gained no more.
SKIP_NONREF_DEBLOCK_FACTOR = 4.0


def shrink_factor(height: int, width: int, target_h: int, target_w: int) -> float:
    """How many times smaller than the stored (height, width) frame its scaled copy is on its
    less-shrunk side, whichever way a display matrix turns it (the rotation is only known once
    a frame is decoded; the decoder's options are set before)."""
    return 1.0 / max(target_h / height, target_w / width, target_h / width, target_w / height)


def decoder_options(height: int, width: int, target_h: int, target_w: int) -> dict[str, str]:
    """FFmpeg decoder options for a (height, width) stream read into target_h x target_w frames:
    skip the deblocking of non-reference frames when the shrink hides it."""
    if shrink_factor(height, width, target_h, target_w) >= SKIP_NONREF_DEBLOCK_FACTOR:
        return {"skip_loop_filter": "noref"}
    return {}


def _scale(frame, plan: FramePlan, reformatter) -> np.ndarray:
    hs, ws = plan.scaled
    enlarge = hs * ws > frame.height * frame.width
    # Planar RGB out: at whole-number ratios swscale's packed rgb24 path scales the chroma
    # coarsely (measured on saturated texture at 4x: 4.2 levels of 255 from the truth, gbrp 1.0).
    # One reformatter per clip keeps swscale's context (its filter tables) from frame to frame:
    # 4.7 against 7.5 ms for 16 1080p frames to 64x114. Area is the cheapest filter within the
    # decoders' tolerance of `to_pixels` there (mean 1.3, p99 4.7 levels; bilinear 1.2 and 2.4
    # but 7.0 ms; fast bilinear and point, 2 ms, alias: mean 12.5 and 5.0, p99 43 and 17).
    rgb = reformatter.reformat(frame, width=ws, height=hs, format="gbrp",
                               interpolation="BICUBIC" if enlarge else "AREA").to_ndarray()
    return crop_and_turn(rgb[None], plan)[0]


def decode_clip(path: Path, indices: Sequence[int], height: int, width: int,
                threads: int = 0, container=None) -> np.ndarray:
    """Frames `indices` (non-decreasing, repeats allowed) of the file's first video stream as
    (len(indices), height, width, 3) uint8, upright (the display matrix applied), each scaled to
    cover height x width and centre-cropped. `threads`: the decoder's threads (0: FFmpeg's
    choice; 1 in a data worker, whose siblings have the other cores). `container`: the file
    already opened by PyAV and not yet decoded from (the caller closes it); None: opened here."""
    indices = [int(i) for i in indices]
    if not indices or any(b < a for a, b in zip(indices, indices[1:])) or indices[0] < 0:
        raise ValueError(f"frame indices must be non-empty, non-negative and non-decreasing, "
                         f"got {indices}")
    try:
        frames = _decode(path, indices, height, width, threads, seek=indices[0] > 0,
                         container=container)
        if frames is None:  # the seek could not be trusted: count frames from the start
            frames = _decode(path, indices, height, width, threads, seek=False)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many types for a broken file
        raise DecodeError(path, "undecodable",
                          f"PyAV could not decode it ({type(e).__name__}: {e})") from None
    return frames


def _decode(path: Path, indices: list[int], height: int, width: int, threads: int,
            seek: bool, container=None):
    import av
    from av.video.reformatter import VideoReformatter

    if container is None:
        with av.open(str(path)) as opened:
            return _decode(path, indices, height, width, threads, seek, opened)
    last = indices[-1]
    out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    slots: dict[int, list[int]] = {}
    for slot, number in enumerate(indices):
        slots.setdefault(number, []).append(slot)
    plans: dict[tuple[int, int, int], FramePlan] = {}
    reformatter = VideoReformatter()
    if not container.streams.video:
        raise DecodeError(path, "no_video", "no video stream")
    stream = container.streams.video[0]
    # Frame threading (AUTO picks it for H.264, HEVC, VP9): slice threading would be
    # ~0.015 s faster on the bench's clip, whose x264 wrote 2 slices a frame, and serial on
    # the single-slice files most cameras write.
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    context = stream.codec_context
    if context.width and context.height:
        context.options = decoder_options(context.height, context.width, height, width)
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    base = stream.time_base
    origin = stream.start_time or 0
    if seek:
        if not rate or base is None:
            return None
        container.seek(origin + int(indices[0] / rate / base), stream=stream, backward=True,
                       any_frame=False)
    number, first = -1, True
    for frame in container.decode(stream):
        if seek:
            if frame.pts is None:
                return None
            number = round(float((frame.pts - origin) * base) * rate)
            if first and number > indices[0]:  # landed after the clip's first frame
                return None
        else:
            number += 1
        first = False
        if number in slots:
            key = (frame.height, frame.width, getattr(frame, "rotation", 0) or 0)
            plan = plans.get(key)
            if plan is None:
                plan = plans[key] = plan_frame(frame.height, frame.width, height, width,
                                               key[2])
            pixels = _scale(frame, plan, reformatter)
            for slot in slots.pop(number):
                out[slot] = pixels
        if number >= last:
            break
    if slots:
        if seek:  # timestamps with gaps: count the frames instead
            return None
        raise DecodeError(path, "too_short", f"ended at frame {number + 1}, the sample needs "
                                             f"{last + 1} frames")
    return out
