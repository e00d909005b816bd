"""Where a decoded frame's pixels go: scaled to cover the target, centre-cropped, turned upright.

One plan for every decoder, so that PyAV (swscale), DALI (its resize and slice) and Pillow agree
on which source pixels land where. A frame is stored as the encoder saw it; a display matrix (a
phone video) or an EXIF orientation says it is shown turned by `rotation` degrees
counterclockwise. The plan scales the stored frame, crops in stored coordinates, and only then
turns the small crop (`np.rot90`): the decoder never holds a full-size turned copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FramePlan:
    scaled: tuple[int, int]  # (height, width) the stored frame is scaled to
    crop: tuple[int, int, int, int]  # (top, left, height, width) in the scaled stored frame
    turns: int  # quarter turns counterclockwise after the crop (np.rot90's k)


def quarter_turns(rotation: float) -> int:
    """Counterclockwise degrees -> quarter turns in 0..3 (a display matrix's angle is a multiple
    of 90 for every camera; anything else is rounded to the nearest)."""
    return int(round(rotation / 90.0)) % 4


def cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The size a (height, width) frame is scaled to so that it covers the target, aspect kept."""
    scale = max(target_h / height, target_w / width)
    return max(target_h, round(height * scale)), max(target_w, round(width * scale))


def plan_frame(height: int, width: int, target_h: int, target_w: int,
               rotation: float = 0) -> FramePlan:
    """The plan for a stored (height, width) frame shown turned by `rotation` degrees
    counterclockwise, to become a target_h x target_w upright crop."""
    k = quarter_turns(rotation)
    shown = (height, width) if k % 2 == 0 else (width, height)
    sh, sw = cover_size(*shown, target_h, target_w)
    top, left = (sh - target_h) // 2, (sw - target_w) // 2  # the crop, as shown
    hs, ws = (sh, sw) if k % 2 == 0 else (sw, sh)  # the scaled frame, as stored
    # np.rot90(S, k) = D: the stored rectangle that turns into D[top:+th, left:+tw].
    if k == 0:
        crop = (top, left, target_h, target_w)
    elif k == 1:  # D[i, j] = S[j, ws - 1 - i]
        crop = (left, ws - top - target_h, target_w, target_h)
    elif k == 2:  # D[i, j] = S[hs - 1 - i, ws - 1 - j]
        crop = (hs - top - target_h, ws - left - target_w, target_h, target_w)
    else:  # D[i, j] = S[hs - 1 - j, i]
        crop = (hs - left - target_w, top, target_w, target_h)
    return FramePlan((hs, ws), crop, k)


def crop_and_turn(frames: np.ndarray, plan: FramePlan, cropped: bool = False) -> np.ndarray:
    """(T, H, W, C) frames scaled to `plan.scaled` -> (T, target_h, target_w, C) upright,
    contiguous. `cropped`: the frames are the plan's crop already (a decoder did it)."""
    if not cropped:
        top, left, h, w = plan.crop
        frames = frames[:, top:top + h, left:left + w]
    if plan.turns:
        frames = np.rot90(frames, plan.turns, axes=(1, 2))
    return np.ascontiguousarray(frames)
