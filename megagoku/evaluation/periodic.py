"""Evaluation during training (`eval.every`), beside the sample grids of `train/samples.py`:
every N steps rank 0 scores the EMA weights on the built-in shapes data (`suite.py`: prompt
adherence per seen / held-out split, fd_shapes3d for clips and images) and logs the numbers as
`eval/...` scalars through the trainer's metrics logger (metrics.jsonl and TensorBoard), with
the full report in `<run_dir>/eval/step_N/eval.json`.

Like the sampler, it works on a copy of the model (built on first use, loaded with the EMA weights
each time: `inference.periodic.PeriodicGeneration`, their common base), draws its noise from its
own seeded generators, and builds or trains the classifier with the global random state saved and
restored, so a run with evaluation ends bit-identical to one without. The classifier is trained
on the first evaluation when it is not cached yet (a minute or two, said in the log; the other
ranks wait for rank 0 in their next collective). Every layout evaluates: under TP, Ulysses or
ZeRO-3 every rank takes part in gathering the EMA, one tensor at a time, into rank 0's copy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from megagoku.config import TrainingConfig
from megagoku.evaluation.classifier import ShapesClassifier, load_or_train
from megagoku.evaluation.suite import EvalResult, EvalSettings, evaluate_generator
from megagoku.inference import Generator
from megagoku.inference.periodic import PeriodicGeneration
from megagoku.launch import heartbeat
from megagoku.models import TextEncoder

log = logging.getLogger(__name__)


def settings_from_config(config: TrainingConfig) -> EvalSettings:
    return EvalSettings(prompts=config.eval.prompts, samples=config.eval.samples,
                        images=config.eval.images, steps=config.sample.steps,
                        cfg_scale=config.sample.cfg_scale, seed=config.sample.seed)


class PeriodicEvaluator(PeriodicGeneration):
    def __init__(self, config: TrainingConfig, run_dir: Path, text_encoder: TextEncoder,
                 device: torch.device, log_scalars: Optional[Callable[[int, dict], None]] = None,
                 cache_dir: Optional[Path] = None):
        """`log_scalars(step, scalars)`: the trainer's MetricsLogger.log (metrics.jsonl and
        TensorBoard)."""
        super().__init__(config, run_dir, text_encoder, device, config.eval.every)
        self.log_scalars, self.cache_dir = log_scalars, cache_dir
        self.settings = settings_from_config(config)
        self.classifier: Optional[ShapesClassifier] = None

    @heartbeat.phase("eval")  # its sampling steps and classifier batches report progress
    def run(self, step: int, generator: Generator) -> EvalResult:
        """Score the generator (the EMA weights of the whole model); returns the result."""
        if self.classifier is None:
            self.classifier = load_or_train(self.config.data, self.cache_dir, say=log.info)
        result = evaluate_generator(generator, self.classifier, self.settings)
        out = self.run_dir / "eval" / f"step_{step:08d}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps({"step": step, **result.as_dict()}, indent=1))
        scalars = result.scalars()
        if self.log_scalars is not None:
            self.log_scalars(step, scalars)
        video = result.summary.get("video", {})
        log.info("step %d evaluation (%.0f s): held-out all-right %s, seen %s, fd_shapes3d %.3f",
                 step, result.seconds,
                 _share(video.get("held_out")), _share(video.get("seen")),
                 result.summary.get("fd_shapes3d_video", float("nan")))
        return result


def _share(row: Optional[dict]) -> str:
    return "-" if not row else f"{row.get('classifier_all', float('nan')):.0%}"
