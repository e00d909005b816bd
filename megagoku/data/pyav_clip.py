"""A clip's frames through PyAV, decoding only what the sample uses.

The decoder starts at the clip's first frame (a seek to the keyframe before it when that frame is
not the file's first) and stops after the last frame the sample's stride uses. Each frame it keeps
is scaled by swscale while it is converted to RGB (`VideoFrame.reformat`: area averaging when
shrinking, bicubic when enlarging; planar RGB, which PyAV hands back in R, G, B order) straight
to the size its `FramePlan` needs, then cropped and turned upright: no full-size RGB frame, and
no float, is ever made, so a sample's memory follows its target size, not the source's. Each
frame gets its own plan, so a stream whose size changes midway (concatenated segments) still
gives frames of the target size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from megagoku.data.errors import DecodeError
from megagoku.data.geometry import FramePlan, crop_and_turn, plan_frame


def _scale(frame, plan: FramePlan) -> np.ndarray:
    hs, ws = plan.scaled
    enlarge = hs * ws > frame.height * frame.width
    # Planar RGB out: at whole-number ratios swscale's packed rgb24 path scales the chroma
    # coarsely (measured on saturated texture at 4x: 4.2 levels of 255 from the truth, gbrp 1.0).
    rgb = frame.reformat(width=ws, height=hs, format="gbrp",
                         interpolation="BICUBIC" if enlarge else "AREA").to_ndarray()
    return crop_and_turn(rgb[None], plan)[0]


def decode_clip(path: Path, indices: Sequence[int], height: int, width: int,
                threads: int = 0) -> np.ndarray:
    """Frames `indices` (non-decreasing, repeats allowed) of the file's first video stream as
    (len(indices), height, width, 3) uint8, upright (the display matrix applied), each scaled to
    cover height x width and centre-cropped. `threads`: the decoder's threads (0: FFmpeg's
    choice; 1 in a data worker, whose siblings have the other cores)."""
    indices = [int(i) for i in indices]
    if not indices or any(b < a for a, b in zip(indices, indices[1:])) or indices[0] < 0:
        raise ValueError(f"frame indices must be non-empty, non-negative and non-decreasing, "
                         f"got {indices}")
    try:
        frames = _decode(path, indices, height, width, threads, seek=indices[0] > 0)
        if frames is None:  # the seek could not be trusted: count frames from the start
            frames = _decode(path, indices, height, width, threads, seek=False)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many types for a broken file
        raise DecodeError(path, "undecodable",
                          f"PyAV could not decode it ({type(e).__name__}: {e})") from None
    return frames


def _decode(path: Path, indices: list[int], height: int, width: int, threads: int,
            seek: bool):
    import av

    last = indices[-1]
    out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    slots: dict[int, list[int]] = {}
    for slot, number in enumerate(indices):
        slots.setdefault(number, []).append(slot)
    plans: dict[tuple[int, int, int], FramePlan] = {}
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError(path, "no_video", "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
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
                pixels = _scale(frame, plan)
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
