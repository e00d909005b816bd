"""Raw videos with known content, for testing the curation pipeline and for `megagoku curate
--demo`: scenes joined by hard cuts or crossfades, panning or still, with burnt-in text, with a
scene repeated (a duplicate), plus a dull scene, a too-short file, a corrupt file and images;
and shots of a solid object moving on a plain ground (`render_object_shots`), which a scene split
must not cut.

Each scene is a smooth colour texture with a shape on it; the camera pans over the texture at
`speed` pixels per frame while the shape drifts, so optical flow sees motion everywhere. Every
source comes with its truth (cut times, fade intervals, timed captions) in `truth.json`, and an
input list (`inputs.jsonl`) with the timed captions, as datasets such as Panda-70M ship them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from megagoku.data.video_io import encode_video

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (40, 80, 230),
           "yellow": (240, 210, 40), "purple": (150, 50, 200), "orange": (245, 140, 30)}


@dataclass(frozen=True)
class Scene:
    seconds: float
    seed: int  # the texture; two scenes with one seed (and one shape) are duplicates
    shape: Literal["circle", "square", "triangle"] = "circle"
    colour: str = "red"
    speed: float = 1.5  # camera pan in pixels per frame; 0 is a still shot
    # A shaking camera: the view swings this many pixels back and forth once a second, so that
    # frames a second apart match (the scene is one shot) while the motion is violent.
    shake: float = 0.0
    text: Optional[str] = None  # burnt-in, across the frame
    dull: bool = False  # washed out and blurred: low contrast, colour and sharpness
    transition: Literal["cut", "fade"] = "cut"  # how the scene begins

    @property
    def caption(self) -> str:
        motion = "a still" if self.speed == 0 and self.shake == 0 else "a moving"
        return f"{motion} {self.colour} {self.shape} over a textured background"


def _texture(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth colour texture: a few random low-frequency waves per channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((height, width, 3), np.float32)
    base = rng.uniform(60, 190, size=3)
    for c in range(3):
        field = np.zeros((height, width), np.float32)
        for _ in range(4):
            fy, fx = rng.uniform(0.004, 0.012, size=2)
            field += np.sin(fy * y * np.pi + fx * x * np.pi + rng.uniform(0, 2 * np.pi))
        out[..., c] = base[c] + 30 * field
    # Fine grain that the 1 fps scene features average away but optical flow can follow.
    grain = rng.normal(0, 1, size=(height // 4 + 1, width // 4 + 1))
    grain = np.kron(grain, np.ones((4, 4)))[:height, :width, None]
    return np.clip(out + 12 * grain, 0, 255)


def _draw_shape(frame: Image.Image, shape: str, colour: str, cx: float, cy: float, r: float):
    draw = ImageDraw.Draw(frame)
    fill = COLOURS[colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def render_scene(scene: Scene, fps: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one scene."""
    n = int(round(scene.seconds * fps))
    pan = int(np.ceil(abs(scene.speed) * n + 2 * scene.shake)) + 1
    texture = _texture(scene.seed, height, width + pan)
    font = ImageFont.load_default(size=max(10, height // 6))
    frames = []
    for i in range(n):
        x0 = int(round(scene.speed * i)) + (pan - 1 if scene.speed < 0 else 0)
        x0 += int(round(scene.shake * (1 - np.cos(2 * np.pi * i / fps))))
        frame = Image.fromarray(texture[:, x0: x0 + width].astype(np.uint8))
        # The shape drifts back and forth over the middle of the frame (never jumps).
        span = width * 0.4
        drift = (0.5 * abs(scene.speed) * i) % (2 * span)
        _draw_shape(frame, scene.shape, scene.colour, width * 0.3 + min(drift, 2 * span - drift),
                    height * 0.5, height * 0.18)
        if scene.text:
            ImageDraw.Draw(frame).text((width * 0.06, height * 0.2), scene.text,
                                       fill=(255, 255, 255), font=font, stroke_width=2,
                                       stroke_fill=(0, 0, 0))
        array = np.asarray(frame)
        if scene.dull:
            from PIL import ImageFilter

            blurred = np.asarray(frame.filter(ImageFilter.GaussianBlur(4))).astype(np.float32)
            array = (128 + 0.15 * (blurred.mean(axis=2, keepdims=True) - 128)).repeat(3, axis=2)
            array = array.astype(np.uint8)
        frames.append(array)
    return np.stack(frames)


def render_source(path: Path, scenes: list[Scene], fps: int = 8, height: int = 120,
                  width: int = 160, fade_seconds: float = 1.5) -> dict:
    """Write one video of `scenes`; returns its truth: cut times (the first frame of each scene
    after a hard cut), fade intervals and timed captions, in seconds."""
    parts, cuts, fades, captions, t = [], [], [], [], 0.0
    for k, scene in enumerate(scenes):
        frames = render_scene(scene, fps, height, width)
        if k and scene.transition == "fade":
            n = int(round(fade_seconds * fps))
            weights = np.linspace(0, 1, n + 2)[1:-1, None, None, None]
            previous = parts[-1][-n:].astype(np.float32)
            parts[-1] = parts[-1][:-n]
            blend = (1 - weights) * previous + weights * frames[:n].astype(np.float32)
            parts.append(blend.round().astype(np.uint8))
            t -= n / fps
            fades.append((round(t, 3), round(t + n / fps, 3)))
            frames = frames[n:]
            t += n / fps
        elif k:
            cuts.append(round(t, 3))
        start = t
        parts.append(frames)
        t += len(frames) / fps
        captions.append({"start": round(start, 3), "end": round(t, 3), "text": scene.caption})
    encode_video(path, np.concatenate(parts), fps)
    return {"cuts": cuts, "fades": fades, "captions": captions, "seconds": round(t, 3)}


@dataclass(frozen=True)
class ObjectShot:
    """One shot of a plain ground with a solid object moving across it: the footage a scene
    split must keep whole (`render_object_shots`)."""

    ground: tuple[int, int, int]
    colour: tuple[int, int, int]
    shape: Literal["square", "circle"] = "square"
    seconds: float = 5.0
    size: float = 1 / 6  # the object's side, as a share of the frame's height


def render_object_shots(path: Path, shots: list[ObjectShot], fps: int = 12, height: int = 180,
                        width: int = 320) -> list[float]:
    """Write the shots joined by hard cuts; the object crosses the frame left to right in each
    shot while swinging up and down (a new position every frame, far from the last second's);
    returns the cut times."""
    frames, cuts, t = [], [], 0.0
    for k, shot in enumerate(shots):
        if k:
            cuts.append(round(t, 3))
        n = int(round(shot.seconds * fps))
        side = max(2, int(round(height * shot.size)))
        for i in range(n):
            frame = Image.new("RGB", (width, height), shot.ground)
            x = (width - side) * i / max(1, n - 1)
            y = (height - side) / 2 * (1 + 0.8 * np.sin(2 * np.pi * i / fps / 2))
            box = (x, y, x + side, y + side)
            pen = ImageDraw.Draw(frame)
            (pen.rectangle if shot.shape == "square" else pen.ellipse)(box, fill=shot.colour)
            frames.append(np.asarray(frame))
        t += n / fps
    encode_video(path, np.stack(frames), fps)
    return cuts


# The demo's sources: every case the pipeline must handle, in ~60 s of small video.
DEMO_SOURCES = {
    "cuts": [Scene(5, 1, "circle", "red"), Scene(5, 2, "square", "blue", speed=-1.5),
             Scene(5, 3, "triangle", "yellow", transition="fade")],
    "motion": [Scene(5, 4, "circle", "green", speed=0), Scene(5, 5, "circle", "purple"),
               Scene(5, 6, "circle", "orange", speed=0, shake=10)],
    "text": [Scene(5, 7, "square", "red"), Scene(5, 8, "circle", "blue", text="SALE 50% OFF")],
    "duplicate": [Scene(5, 9, "square", "orange"), Scene(5, 10, "circle", "purple"),
                  Scene(5, 9, "square", "orange")],
    "long": [Scene(14, 11, "circle", "yellow")],
    "dull": [Scene(5, 12, "circle", "red", dull=True)],
}


def write_demo_inputs(root: Path, fps: int = 8, height: int = 120, width: int = 160) -> Path:
    """Write the demo's raw files under `root/raw/`, `root/inputs.jsonl` and `root/truth.json`;
    returns the input list."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    truth, rows = {}, []
    for name, scenes in DEMO_SOURCES.items():
        path = raw / f"{name}.mp4"
        truth[name] = render_source(path, scenes, fps, height, width)
        truth[name]["scenes"] = [asdict(s) for s in scenes]
        rows.append({"path": f"raw/{name}.mp4", "captions": truth[name]["captions"]})
    short = raw / "short.mp4"
    render_source(short, [Scene(2, 13, "square", "green")], fps, height, width)
    rows.append({"path": "raw/short.mp4", "caption": "a moving green square"})
    (raw / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    rows.append({"path": "raw/broken.mp4", "caption": "not a video"})
    for k, (shape, colour) in enumerate((("triangle", "blue"), ("square", "yellow"))):
        image = render_scene(Scene(1 / fps, 20 + k, shape, colour, speed=0), fps, height, width)[0]
        Image.fromarray(image).save(raw / f"still_{k}.png")
        rows.append({"path": f"raw/still_{k}.png",
                     "caption": f"a photo of a {colour} {shape} over a textured background"})
    with open(root / "inputs.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (root / "truth.json").write_text(json.dumps(truth, indent=1))
    return root / "inputs.jsonl"
