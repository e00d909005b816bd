"""Hooks for the public benchmarks users run on clusters: read their prompt lists, write prompt
sets in their formats, and write generated samples in the folder layouts their evaluators read.
The benchmarks themselves (VBench's dimension models, GenEval's Mask2Former + CLIP) are not
shipped: they need large downloads and a GPU.

Layouts, as read in the benchmarks' own code (Vchitect/VBench `prompts/README.md`,
`vbench/__init__.py`, `vbench/utils.py`; djghosh13/geneval `README.md`,
`generation/diffusers_generate.py`, `evaluation/evaluate_images.py`):

VBench (text-to-video):
- prompt lists are text files, one prompt per line (`prompts/all_dimension.txt`,
  `prompts/prompts_per_dimension/<dimension>.txt`, `prompts/all_category.txt`); the full
  information file `VBench_full_info.json` is a JSON list of `{"prompt_en": ..., "dimension":
  [...], ...}`.
- samples: one folder holding only videos, 5 per prompt, named `<prompt>-<index>.mp4` with index
  0..4. Standard mode looks up exactly `f"{prompt}-{i}{suffix}"` (the suffix taken from the first
  file in the folder, so nothing but videos may lie there); custom mode recovers the prompt from
  the name by stripping a trailing `-<digits>`.

GenEval (text-to-image):
- prompts: `prompts/evaluation_metadata.jsonl`, one JSON object per line with `prompt`, `tag`,
  `include` (and `exclude`).
- samples: `<outdir>/<NNNNN>/metadata.jsonl` (the prompt's line, written with json.dump),
  `<outdir>/<NNNNN>/samples/<NNNN>.png`, an optional `grid.png`; the evaluator walks the
  digit-named subfolders in any order and every `\\d+.png` in `samples/`.

Our own prompt sets can be written in both formats. Note what each benchmark can judge of them:
VBench's custom-input dimensions (subject/background consistency, motion smoothness, dynamic
degree, aesthetic and imaging quality) apply to any video; GenEval's detector knows COCO objects,
not circles and squares, so its scores only mean something for its own prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from megagoku.data.shapes import parse_caption
from megagoku.data.video_io import to_uint8_frames, write_video

VBENCH_SAMPLES_PER_PROMPT = 5
GENEVAL_SAMPLES_PER_PROMPT = 4
# The dimensions VBench scores for custom prompts (its check_dimension_requires_extra_info).
VBENCH_CUSTOM_DIMENSIONS = ["subject_consistency", "background_consistency",
                            "motion_smoothness", "dynamic_degree", "aesthetic_quality",
                            "imaging_quality"]
VIDEO_SUFFIXES = (".mp4", ".gif", ".jpg", ".png")  # what VBench's custom mode picks up


class BenchmarkError(ValueError):
    """A prompt file or sample folder that does not follow the benchmark's format (the message
    names the file and the line or field)."""


@dataclass
class BenchmarkPrompt:
    prompt: str
    # The benchmark's own record (VBench full info: prompt_en, dimension, ...; GenEval: the
    # whole line), written back unchanged next to the samples.
    record: dict = field(default_factory=dict)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BenchmarkError(f"{path}: cannot read: {e.strerror}") from None


def read_vbench_prompts(path: str | Path) -> list[BenchmarkPrompt]:
    """A VBench prompt list (.txt, one prompt per line) or its full-info JSON list."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BenchmarkError(f"{path}: not a VBench full-info JSON list ({e})") from None
        if not isinstance(entries, list):
            raise BenchmarkError(f"{path}: expected a JSON list of {{prompt_en, dimension}}")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("prompt_en"), str):
                raise BenchmarkError(f"{path}: entry {i}: no prompt_en string")
            out.append(BenchmarkPrompt(entry["prompt_en"], dict(entry)))
        return _checked(out, path)
    prompts = [BenchmarkPrompt(line.strip(), {"prompt_en": line.strip()})
               for line in _lines(path) if line.strip()]
    return _checked(prompts, path)


def read_geneval_prompts(path: str | Path) -> list[BenchmarkPrompt]:
    """GenEval's evaluation_metadata.jsonl: one JSON object with a `prompt` per line."""
    path = Path(path)
    out = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise BenchmarkError(f"{path}: line {number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise BenchmarkError(f"{path}: line {number}: no prompt string")
        out.append(BenchmarkPrompt(record["prompt"], record))
    return _checked(out, path)


def read_prompts(path: str | Path, benchmark: str) -> list[BenchmarkPrompt]:
    if benchmark == "vbench":
        return read_vbench_prompts(path)
    if benchmark == "geneval":
        return read_geneval_prompts(path)
    raise BenchmarkError(f"unknown benchmark {benchmark!r} (vbench or geneval)")


def _checked(prompts: list[BenchmarkPrompt], path: Path) -> list[BenchmarkPrompt]:
    if not prompts:
        raise BenchmarkError(f"{path}: no prompts")
    return prompts


# -- prompt sets in the benchmarks' formats ----------------------------------------------------

def vbench_records(prompts: list[str],
                   dimensions: Optional[list[str]] = None) -> list[BenchmarkPrompt]:
    """Our prompts as VBench full-info entries, for the dimensions it scores on any prompt."""
    dims = list(dimensions or VBENCH_CUSTOM_DIMENSIONS)
    return [BenchmarkPrompt(p, {"prompt_en": p, "dimension": dims}) for p in prompts]


def geneval_records(prompts: list[str]) -> list[BenchmarkPrompt]:
    """Our image captions as GenEval lines: tag `colors`, one object of the caption's colour
    (GenEval's own format; its detector cannot find a 'circle', see the module docstring)."""
    out = []
    for p in prompts:
        parsed = parse_caption(p)
        include = {"class": parsed["shape"] or p, "count": 1}
        if parsed["colour"]:
            include["color"] = parsed["colour"]
        out.append(BenchmarkPrompt(p, {"tag": "colors", "include": [include], "prompt": p}))
    return out


def write_vbench_prompts(prompts: list[BenchmarkPrompt], txt: Path,
                         full_info: Optional[Path] = None) -> list[Path]:
    """A prompt list (one per line) and, optionally, the full-info JSON list."""
    for p in prompts:
        _check_prompt_line(p.prompt)
    txt.parent.mkdir(parents=True, exist_ok=True)
    txt.write_text("".join(p.prompt + "\n" for p in prompts), encoding="utf-8")
    written = [txt]
    if full_info is not None:
        full_info.write_text(json.dumps([p.record or {"prompt_en": p.prompt} for p in prompts],
                                        indent=4), encoding="utf-8")
        written.append(full_info)
    return written


def write_geneval_prompts(prompts: list[BenchmarkPrompt], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p.record or {"prompt": p.prompt}) + "\n"
                            for p in prompts), encoding="utf-8")
    return path


def _check_prompt_line(prompt: str) -> None:
    if "\n" in prompt or not prompt.strip():
        raise BenchmarkError(f"prompt {prompt!r}: a prompt list holds one non-empty line each")


# -- sample folders ----------------------------------------------------------------------------

def vbench_video_name(prompt: str, index: int, suffix: str = ".mp4") -> str:
    """`<prompt>-<index><suffix>`, as VBench's standard mode looks it up. A prompt that cannot
    be a file name as it is (a '/', a NUL, more than 255 bytes) is refused, not altered: VBench
    would not find an altered name."""
    name = f"{prompt}-{index}{suffix}"
    if "/" in prompt or "\0" in prompt:
        raise BenchmarkError(f"prompt {prompt!r}: a '/' or NUL cannot be part of a VBench file "
                             "name")
    if len(name.encode("utf-8")) > 255:
        raise BenchmarkError(f"prompt {prompt[:40]!r}...: {len(name.encode())} bytes, longer "
                             "than a file name may be (255)")
    return name


def write_vbench_sample(folder: Path, prompt: str, index: int, video: torch.Tensor,
                        fps: int = 8, upscale: int = 1, suffix: str = ".mp4") -> Path:
    """One video (3, T, H, W) in [-1, 1] as `<folder>/<prompt>-<index><suffix>`."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_video(folder / vbench_video_name(prompt, index, suffix), video, fps, upscale)


def vbench_prompt_from_name(name: str) -> str:
    """The prompt of a sample file name, by VBench's rule: drop the suffix, then a trailing
    `-<digits>`."""
    return re.sub(r"-\d+$", "", Path(name).stem)


def read_vbench_folder(folder: str | Path) -> dict[str, list[Path]]:
    """{prompt: [video paths by index]} of a VBench sample folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"{folder}: no such sample folder")
    out: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise BenchmarkError(f"{path}: not a video; VBench's folder must hold videos only")
        out.setdefault(vbench_prompt_from_name(path.name), []).append(path)
    for prompt, paths in out.items():
        paths.sort(key=lambda p: int(re.search(r"-(\d+)$", p.stem).group(1))
                   if re.search(r"-(\d+)$", p.stem) else -1)
    return out


def geneval_folder(root: Path, prompt_index: int) -> Path:
    return root / f"{prompt_index:05d}"


def write_geneval_prompt(root: Path, prompt_index: int, prompt: BenchmarkPrompt,
                         images: list[torch.Tensor], upscale: int = 1,
                         grid: bool = True) -> list[Path]:
    """`<root>/<NNNNN>/metadata.jsonl` (the prompt's record as one JSON object), samples as
    `samples/<NNNN>.png` from images (3, 1, H, W) or (3, H, W) in [-1, 1], and `grid.png`."""
    folder = geneval_folder(root, prompt_index)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
        json.dump(prompt.record or {"prompt": prompt.prompt}, f)
    written, frames = [], []
    for j, image in enumerate(images):
        video = image if image.dim() == 4 else image[:, None]
        frame = to_uint8_frames(video[:, :1], upscale)[0]
        frames.append(frame)
        path = folder / "samples" / f"{j:04d}.png"
        Image.fromarray(frame).save(path)
        written.append(path)
    if grid and frames:
        Image.fromarray(np.concatenate(frames, axis=1)).save(folder / "grid.png")
    return written


def read_geneval_folder(root: str | Path) -> list[tuple[dict, list[Path]]]:
    """[(metadata, sample paths)] of a GenEval sample folder, by folder number, as its
    evaluator reads it (digit-named folders; `\\d+.png` files in samples/)."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{root}: no such sample folder")
    out = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
                         key=lambda p: int(p.name)):
        meta_path = folder / "metadata.jsonl"
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BenchmarkError(f"{meta_path}: unreadable ({e})") from None
        samples = sorted((p for p in (folder / "samples").glob("*.png")
                          if re.fullmatch(r"\d+\.png", p.name)), key=lambda p: int(p.stem))
        out.append((metadata, samples))
    return out
