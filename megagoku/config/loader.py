"""YAML -> typed dataclasses, with `section.key=value` overrides, validated once before any work.

A training config may name its model as a preset file instead of spelling it out:

    model: models/tiny.yaml             # relative to this file, or to configs/
    model: {preset: models/goku_2b.yaml, depth: 4}   # preset plus overrides

Every error is one line naming the file and the field, e.g.
`configs/tiny.yaml: model.num_heads: 7 does not divide hidden_size 128`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml

from megagoku.config.schema import LEGACY_BLOCK, ModelConfig, TrainingConfig, VAETrainingConfig

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_VAE_CONFIG = CONFIGS_DIR / "vae" / "tiny.yaml"  # `megagoku train-vae` without --config


class ConfigError(ValueError):
    """A configuration problem, already formatted as `file: field: message`."""


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        detail = getattr(e, "problem", None) or " ".join(str(e).split())  # one line
        raise ConfigError(f"{path}: invalid YAML{where}: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def find_config_file(ref: str, relative_to: Path) -> Path:
    """A file one config names: relative to that config's folder, to configs/, or as given."""
    for candidate in (relative_to / ref, CONFIGS_DIR / ref, Path(ref)):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(ref)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return f"a mapping of names to {_type_name(typing.get_args(tp)[1])}s"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if _fixed_length(origin, args):
            return f"a list of {len(args)} {_type_name(args[0])}s"
        return f"a list of {_type_name(args[0])}s"
    return getattr(tp, "__name__", str(tp))


def _fixed_length(origin: Any, args: tuple) -> bool:
    """A schema tuple has a fixed length unless written tuple[T, ...]; a list never has."""
    return origin is tuple and args[-1] is not Ellipsis


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return `value` as type `tp` or raise ConfigError(where: ...). Only lossless conversions."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):  # an item of a list of sections (data.tiers)
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise bad
    if origin is dict:  # string keys (category names), values of one type
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return {k: _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):  # a tuple has a fixed length unless written tuple[T, ...]
        args = typing.get_args(tp)
        fixed = _fixed_length(origin, args)
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
            raise bad
        item_types = args if fixed else [args[0]] * len(value)
        items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, item_types))]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite float, got {value!r}")
        return float(value)
    if tp is str:
        # YAML reads `name: 2024` as a number; as a string field it is still that text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type, data: dict, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:  # a section header with nothing under it
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


# Keys renamed because their old name misled; the old name still reads (a YAML file, a --set, a
# checkpoint's saved config), with one warning line per source. Old dotted key -> new one.
RENAMED_KEYS = {
    # The activation-checkpointing stride, not a checkpoint-saving interval.
    "parallel.checkpoint_every": "parallel.activation_checkpoint_every",
}
_warned: set[tuple[str, str]] = set()


def _warn_renamed(source: str, old: str) -> None:
    if (source, old) not in _warned:
        _warned.add((source, old))
        log.warning("%s: %s is deprecated, read as %s (rename it: the old name will go)",
                    source, old, RENAMED_KEYS[old])


def _rename_keys(data: dict, source: str) -> None:
    """Move every renamed key of the mapping `data` (a whole config) to its new name."""
    for old, new in RENAMED_KEYS.items():
        section, old_key = old.split(".")
        new_key = new.split(".")[1]
        part = data.get(section)
        if not isinstance(part, dict) or old_key not in part:
            continue
        if new_key in part:
            raise ConfigError(f"{source}: {old}: renamed {new}, which is given too: keep only "
                              f"{new}")
        _warn_renamed(source, old)
        part[new_key] = part.pop(old_key)


def _renamed_override(key: str, source: str) -> str:
    if key in RENAMED_KEYS:
        _warn_renamed(f"{source} (--set)", key)
        return RENAMED_KEYS[key]
    return key


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """`["model.depth=4", "train.lr=1e-3"]` -> [("model.depth", 4), ("train.lr", 0.001)]."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def _model_file_to_preset(data: dict) -> None:
    """`model: FILE` means `model: {preset: FILE}`, so that `model.KEY` overrides apply to it."""
    if isinstance(data.get("model"), str):
        data["model"] = {"preset": data["model"]}


def _resolve_model_section(data: dict, base_dir: Path, source: str) -> None:
    """Replace `model: <preset file>` or `model: {preset: <file>, ...}` by the merged mapping."""
    model = data.get("model")
    if not isinstance(model, dict) or "preset" not in model:
        return
    ref = model.pop("preset")
    if not isinstance(ref, str):
        raise ConfigError(f"{source}: model.preset: expected a file name, got {ref!r}")
    try:
        preset_path = find_config_file(ref, base_dir)
    except FileNotFoundError:
        raise ConfigError(f"{source}: model.preset: no such preset file {ref!r}") from None
    merged = _read_yaml(preset_path)
    merged.update(model)
    data["model"] = merged


def _check(config: Any, source: str, prefix: str = "") -> None:
    """Sections first, then what spans them (a cross-section message assumes sane sections)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _check(value, source, f"{prefix}{f.name}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check(item, source, f"{prefix}{f.name}[{i}].")
    for name, message in config.problems():
        raise ConfigError(f"{source}: {prefix}{name}: {message}")


def config_from_dict(cls: type, data: dict, source: str) -> Any:
    """Build and validate one config dataclass (e.g. a VAE's saved shape); `source` names it in
    errors."""
    try:
        config = _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    _check(config, source)
    return config


def load_training_config(path: str | Path | None, overrides: Iterable[str] = ()) -> TrainingConfig:
    """Load, override and validate a full training config. `path=None` gives the defaults."""
    if path is None:
        return training_config_from_dict({}, "<defaults>", overrides)
    path = Path(path)
    return training_config_from_dict(_read_yaml(path), str(path), overrides, path.parent)


def training_config_from_dict(data: dict, source: str, overrides: Iterable[str] = (),
                              base_dir: Path = CONFIGS_DIR) -> TrainingConfig:
    """Build and validate a training config from a mapping (a YAML file, or a checkpoint's
    saved config); `source` names it in errors."""
    data = copy.deepcopy(data)
    _rename_keys(data, source)
    _model_file_to_preset(data)
    for key, value in parse_overrides(overrides):
        _set_path(data, _renamed_override(key, source), value)
        _model_file_to_preset(data)
    _resolve_model_section(data, base_dir, source)
    return config_from_dict(TrainingConfig, data, source)


def saved_training_config(data: dict, source: str) -> TrainingConfig:
    """The training config a checkpoint or model directory saved (`to_dict` of every field).

    A saved config is complete, so a model key it lacks did not exist when it was written: the
    block keys it lacks take the values of the block that code built (`LEGACY_BLOCK`), not
    today's defaults, so that the checkpoint loads and samples as it always did."""
    data = copy.deepcopy(data)
    model = data.get("model")
    if isinstance(model, dict) and "preset" not in model:
        for key, value in LEGACY_BLOCK.items():
            model.setdefault(key, value)
    return training_config_from_dict(data, source)


def load_vae_training_config(path: str | Path | None,
                             overrides: Iterable[str] = ()) -> VAETrainingConfig:
    """Load, override and validate a `megagoku train-vae` config (sections vae, data, train).
    `path=None` is the embedded default, configs/vae/tiny.yaml."""
    path = Path(path) if path is not None else DEFAULT_VAE_CONFIG
    data = _read_yaml(path)
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    return config_from_dict(VAETrainingConfig, data, str(path))


def load_model_config(path: str | Path, overrides: Iterable[str] = ()) -> ModelConfig:
    """Load a model preset file, or the model section of a training config."""
    path = Path(path)
    data = _read_yaml(path)
    if any(key in data for key in ("model", "train", "data", "flow")):
        return load_training_config(path, overrides).model
    source = str(path)
    for key, value in parse_overrides(overrides):
        _set_path(data, key.removeprefix("model."), value)
    try:
        config = _build(ModelConfig, data, "model")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    _check(config, source, "model.")
    return config


def to_dict(config: Any) -> dict:
    """A plain, YAML-safe dict of a config (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))
