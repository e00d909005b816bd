"""One evaluation of a text-to-video model on the built-in shapes data, shared by `megagoku eval`
and evaluation during training (`periodic.py`):

1. generate `samples` clips per prompt of a prompt set (seen / held-out, see `adherence.py`), and
   `samples` images per image caption, with the model's own sampler (Euler + CFG);
2. read them back: prompt adherence per split from pixels and from the in-repo classifier;
3. Fréchet distances in the classifier's feature space between the generated clips and as many
   real clips of the same captions: `fd_shapes3d_video` and, for single frames,
   `fd_shapes3d_image`. These are **not FVD / FID** (no I3D or Inception features): comparable
   between runs scored by the same cached classifier only. Beside each, `fd_floor_*` is the
   distance between two independent real sets of the same size: with a few dozen clips the
   estimate is biased upwards, and a model is as good as this measure can tell once it reaches
   the floor.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from megagoku.evaluation.adherence import (Scored, image_captions, prompt_set, real_clips,
                                           score_clips, summarise)
from megagoku.evaluation.classifier import ShapesClassifier, predict
from megagoku.evaluation.frechet import frechet_distance
from megagoku.inference import Generator


@dataclass
class EvalSettings:
    prompts: str = "demo"  # demo | seen | held_out | all
    samples: int = 4  # clips per prompt (and images per image caption)
    images: bool = True  # also single-frame images of the 12 image captions
    steps: int = 25
    cfg_scale: float = 4.0
    seed: int = 0
    batch: int = 16  # prompts generated together

    def check(self, source: str = "eval") -> None:
        if self.samples < 1:
            raise ValueError(f"{source}: samples: must be positive, got {self.samples}")
        if self.steps < 1:
            raise ValueError(f"{source}: steps: must be positive, got {self.steps}")
        if self.batch < 1:
            raise ValueError(f"{source}: batch: must be positive, got {self.batch}")


@dataclass
class EvalResult:
    summary: dict  # {"video": {split: {check: share}}, "image": ..., "fd_*": ...}
    records: list[Scored]
    videos: list[torch.Tensor] = field(default_factory=list)  # in the order of `records`
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"summary": self.summary, "seconds": round(self.seconds, 1),
                "samples": [r.as_dict() for r in self.records]}

    def scalars(self, prefix: str = "eval/") -> dict[str, float]:
        """Flat numbers for metrics.jsonl and TensorBoard, e.g. eval/video/held_out/
        classifier_all, eval/fd_shapes3d_video."""
        out = {}
        for kind in ("video", "image"):
            for split, checks in self.summary.get(kind, {}).items():
                for check, value in checks.items():
                    if check != "clips":
                        out[f"{prefix}{kind}/{split}/{check}"] = value
        out.update({f"{prefix}{k}": v for k, v in self.summary.items() if k.startswith("fd_")})
        return out


def _generate(generator: Generator, jobs: list[tuple[str, int]], frames: int,
              settings: EvalSettings, progress: Optional[Callable[[int, int], None]]
              ) -> list[torch.Tensor]:
    data = generator.config.data
    out: list[torch.Tensor] = []
    if progress is not None:
        progress(0, len(jobs))  # the start: rates are measured from here
    for start in range(0, len(jobs), settings.batch):
        chunk = jobs[start:start + settings.batch]
        out += generator.generate([p for p, _ in chunk], frames, data.height, data.width,
                                  settings.steps, settings.cfg_scale,
                                  seeds=[s for _, s in chunk])
        if progress is not None:
            progress(len(out), len(jobs))
    return out


def _fd(classifier: ShapesClassifier, generated: torch.Tensor, captions: list[str],
        per_caption: int, data, kind: str) -> tuple[float, float]:
    """(fd of generated vs real clips of the same captions, fd of two independent real sets)."""
    real = real_clips(captions, per_caption, data, kind)
    other = real_clips(captions, per_caption, data, kind, seed=data.seed + 7 * 104729)
    _, f_gen = predict(classifier, generated)
    _, f_real = predict(classifier, real)
    _, f_other = predict(classifier, other)
    return frechet_distance(f_gen, f_real), frechet_distance(f_other, f_real)


@torch.no_grad()
def evaluate_generator(generator: Generator, classifier: ShapesClassifier,
                       settings: EvalSettings,
                       progress: Optional[Callable[[str, int, int], None]] = None
                       ) -> EvalResult:
    """Generate, read back and score; `progress(what, done, total)` before the first batch
    (done = 0) and after each."""
    settings.check()
    start = time.perf_counter()
    data = generator.config.data
    pairs = prompt_set(data, settings.prompts)
    n = settings.samples
    records: list[Scored] = []
    clips_out: list[torch.Tensor] = []
    summary: dict = {"settings": asdict(settings)}
    groups = [("video", data.frames, [(p, s) for p, s in pairs])]
    if settings.images:
        groups.append(("image", 1, [(c, "seen") for c in image_captions()]))
    for kind, frames, prompt_splits in groups:
        prompts = [p for p, _ in prompt_splits]
        jobs = [(p, settings.seed + k) for p in prompts for k in range(n)]
        report = (lambda done, total, kind=kind: progress(kind, done, total)) \
            if progress is not None else None
        clips = _generate(generator, jobs, frames, settings, report)
        stacked = torch.stack([c.float().cpu().clamp(-1, 1) for c in clips])
        splits = [s for _, s in prompt_splits for _ in range(n)]
        scored, _ = score_clips(stacked, [p for p, _ in jobs], splits, kind, classifier,
                                [s for _, s in jobs])
        records += scored
        clips_out += list(stacked)
        summary[kind] = summarise(scored)
        if len(stacked) >= 2:
            fd, floor = _fd(classifier, stacked, prompts, n, data, kind)
            summary[f"fd_shapes3d_{kind}"] = fd
            summary[f"fd_floor_{kind}"] = floor
    return EvalResult(summary, records, clips_out, time.perf_counter() - start)


def summary_table(summary: dict) -> str:
    """The printed table: one row per (kind, split), one column per check; then the fds."""
    checks = ["classifier_all", "classifier_colour", "classifier_shape", "classifier_direction",
              "pixel_colour", "pixel_direction"]
    lines = ["| clips | split | n | " + " | ".join(checks) + " |",
             "|---|---|---:|" + "---:|" * len(checks)]
    for kind in ("video", "image"):
        for split in ("held_out", "seen", "all"):
            row = summary.get(kind, {}).get(split)
            if row is None:
                continue
            cells = [f"{row[c]:.0%}" if c in row else "-" for c in checks]
            lines.append(f"| {kind} | {split} | {row['clips']} | " + " | ".join(cells) + " |")
    lines.append("")
    for kind in ("video", "image"):
        if f"fd_shapes3d_{kind}" in summary:
            lines.append(f"fd_shapes3d_{kind} = {summary[f'fd_shapes3d_{kind}']:.3f} "
                         f"(real-vs-real floor {summary[f'fd_floor_{kind}']:.3f}; in-repo "
                         "classifier features: not FVD/FID)")
    return "\n".join(lines)
