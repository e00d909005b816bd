"""Stage plans: Goku's multi-stage training as one YAML file (configs/stages/).

    name: tiny-stages
    base: ../tiny.yaml              # the training config every stage starts from
    run_dir: checkpoints/tiny-stages
    stages:
      - name: t2i                   # stage 1: text-to-image
        set: {data.image_fraction: 1.0, train.steps: 400}
      - name: joint                 # stage 2: images and videos; starts from t2i's weights
        set: {data.image_fraction: 0.2, train.lr: 5.0e-4}
      - name: t2v_ft                # stage 3: from `joint` (init_from names any earlier stage)
        init_from: joint
        init_optimizer: false       # the default: a fresh AdamW, a new warmup and schedule
        set: {data.image_fraction: 0.0}

A stage's config is the base, then its `set` (dotted keys, as `--set`), then the command line's
`--set` (for every stage). Each stage runs in `<run_dir>/<name>` and starts from the final
checkpoint of `init_from` (default: the stage before; none for the first): its weights, and its
optimizer moments when `init_optimizer`. Every stage is built and validated when the plan loads,
so a bad stage stops the plan before the first one starts; all stages must share the model's shape
(their weights carry over), except that a stage may add image conditioning (`model.
image_condition`: an image-to-video stage from a text-to-video one, configs/stages/i2v_tiny.yaml).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from megagoku.config.loader import (ConfigError, _read_yaml, parse_overrides, to_dict,
                                    training_config_from_dict)
from megagoku.config.schema import TrainingConfig

STAGE_KEYS = {"name", "set", "init_from", "init_optimizer"}
PLAN_KEYS = {"name", "base", "run_dir", "stages"}
# The plan decides these for every stage: where it runs and what it starts from.
RUNNER_OWNED = ("train.run_dir", "checkpoint.init_from", "checkpoint.init_optimizer",
                "checkpoint.resume")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Stage:
    name: str
    config: TrainingConfig  # the base with this stage's and the command line's overrides
    init_from: Optional[str]  # an earlier stage's name, or None (a fresh start)
    init_optimizer: bool


@dataclass
class StagePlan:
    name: str
    source: str
    run_dir: Path
    stages: list[Stage]

    def stage_dir(self, stage: Stage) -> Path:
        return self.run_dir / stage.name

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"{self.source}: stages: no stage named {name!r} "
                          f"(stages: {', '.join(s.name for s in self.stages)})")


def _flatten(tree: dict, prefix: str = "") -> Iterable[tuple[str, object]]:
    """`{train: {lr: 1}}` and `{train.lr: 1}` both give ("train.lr", 1)."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def load_stage_plan(path: str | Path, overrides: Iterable[str] = ()) -> StagePlan:
    """Load and validate a stage plan; `overrides` (`section.key=value`) apply to every stage."""
    path = Path(path)
    source = str(path)
    data = _read_yaml(path)
    unknown = sorted(set(data) - PLAN_KEYS)
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown key (a stage plan has "
                          f"{', '.join(sorted(PLAN_KEYS))})")
    if not isinstance(data.get("base"), str):
        raise ConfigError(f"{source}: base: expected the path of a training config")
    base_path = path.parent / data["base"]
    if not base_path.is_file():
        raise ConfigError(f"{source}: base: no such file {base_path}")
    base = _read_yaml(base_path)
    stages_data = data.get("stages")
    if not isinstance(stages_data, list) or not stages_data:
        raise ConfigError(f"{source}: stages: expected a non-empty list of stages")
    command_line = [f"{k}={v}" for k, v in parse_overrides(overrides)]  # checked once, early
    for key, _ in parse_overrides(overrides):
        if key in RUNNER_OWNED:
            raise ConfigError(f"--set {key}: the stage plan sets it for every stage")

    stages: list[Stage] = []
    for i, raw in enumerate(stages_data):
        where = f"{source}: stages[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with name and set")
        unknown = sorted(set(raw) - STAGE_KEYS)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (a stage has "
                              f"{', '.join(sorted(STAGE_KEYS))})")
        name = raw.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ConfigError(f"{where}.name: expected a name of letters, digits, '_', '.', "
                              f"'-', got {name!r}")
        if any(s.name == name for s in stages):
            raise ConfigError(f"{where}.name: {name!r} is used by an earlier stage")
        where = f"{source}: stages[{i}] ({name})"
        sets = raw.get("set") or {}
        if not isinstance(sets, dict):
            raise ConfigError(f"{where}.set: expected a mapping of section.key: value")
        stage_overrides = []
        for key, value in _flatten(sets):
            if key in RUNNER_OWNED:
                raise ConfigError(f"{where}.set.{key}: the stage plan sets it (use the stage's "
                                  "init_from / init_optimizer)")
            stage_overrides.append(f"{key}={_yaml_scalar(value)}")
        init_from = raw.get("init_from", stages[-1].name if stages else None)
        if init_from is not None and not any(s.name == init_from for s in stages):
            raise ConfigError(f"{where}.init_from: {init_from!r} is not an earlier stage")
        init_optimizer = raw.get("init_optimizer", False)
        if not isinstance(init_optimizer, bool):
            raise ConfigError(f"{where}.init_optimizer: expected true or false")
        if init_optimizer and init_from is None:
            raise ConfigError(f"{where}.init_optimizer: the first stage has no optimizer to "
                              "start from")
        try:
            config = training_config_from_dict(base, f"{where} (base {base_path})",
                                               stage_overrides + command_line, base_path.parent)
        except ConfigError as e:
            raise ConfigError(str(e)) from None
        if stages and _shape(config) != _shape(stages[0].config):
            field = next(k for k, v in _shape(config).items() if _shape(stages[0].config)[k] != v)
            raise ConfigError(f"{where}.set: model.{field} differs from stage "
                              f"{stages[0].name!r}: every stage trains the same weights")
        parent = next((s for s in stages if s.name == init_from), None)
        if parent is not None and parent.config.model.image_condition \
                and not config.model.image_condition:
            raise ConfigError(f"{where}.set: model.image_condition: stage {init_from!r} is an "
                              "image-to-video model; a stage from it must be one too")
        if parent is not None and init_optimizer and \
                parent.config.model.image_condition != config.model.image_condition:
            raise ConfigError(f"{where}.init_optimizer: this stage adds image conditioning, "
                              f"whose new weights {init_from!r}'s optimizer state lacks")
        stages.append(Stage(name, config, init_from, init_optimizer))

    run_dir = data.get("run_dir") or f"checkpoints/{data.get('name') or path.stem}"
    return StagePlan(str(data.get("name") or path.stem), source, Path(run_dir), stages)


def _shape(config) -> dict:
    """The model's shape as stages must share it. Image conditioning may be added by a later
    stage (image-to-video from a text-to-video stage): its new input weights start at zero."""
    shape = to_dict(config.model)
    shape.pop("image_condition")
    return shape


def _yaml_scalar(value: object) -> str:
    """A value as `--set` parses it back: JSON is one-line YAML."""
    return json.dumps(value)
