"""Weights in Goku's released layout on disk (`megagoku convert --format goku-official`): one
safetensors file whose block tensors carry the released module names and shapes
(megagoku/models/official.py) and whose other tensors keep ours.

The file's metadata holds {"format": "goku-official", "config": <our training config, JSON>,
"weights": "ema" | "model", "step", "source"}: `checkpoint.init_from` and `megagoku sample` read
it like a model directory (`OfficialFileReader`), the heads split back into our fused per-head
projections. A file without our config (weights from elsewhere) needs one first:
`megagoku convert --input FILE --config CONFIG --format goku-official --output NEW.safetensors`.
Reading and writing are exact: ours -> official -> ours gives the same bits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors import safe_open

from megagoku.config import ConfigError, load_training_config, saved_training_config, to_dict
from megagoku.models.official import (OFFICIAL_FORMAT, LayoutError, check_released,
                                      from_official, official_tensors, our_sources, to_official)
from megagoku.train.checkpoint import (MODEL_FILE, WEIGHT_KINDS, CheckpointError,
                                       CheckpointReader, ModelDirReader, checked_header,
                                       checked_values, find_weights, open_weights, weights_kind)
from megagoku.train.export import (DTYPES, SAFETENSORS_DTYPES, Progress, TensorSource,
                                   write_safetensors)

SUFFIX = ".safetensors"


def is_official_file(path: str | Path) -> bool:
    """A single safetensors file (the official layout); checkpoints and model dirs are folders."""
    return Path(path).suffix == SUFFIX and Path(path).is_file()


class OfficialFileReader(ModelDirReader):
    """An official-layout file read like a model directory (its one kind of weights serves as
    both `model/` and `ema/`, no optimizer state), under our tensor names."""

    def __init__(self, path: str | Path,  # noqa: D107 - not ModelDirReader's folder checks
                 allow_nonfinite: bool = False):
        self.path = Path(path)
        self.allow_nonfinite = allow_nonfinite
        checked_header(self.path)  # a forged or truncated file: one line, before any mapping
        try:
            self._file = safe_open(str(self.path), framework="pt")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{self.path}: not a safetensors file ({e})") from None
        meta = self._file.metadata() or {}
        if meta.get("format") != OFFICIAL_FORMAT:
            raise CheckpointError(f"{self.path}: metadata format {meta.get('format')!r}, "
                                  f"expected {OFFICIAL_FORMAT!r}")
        if "config" not in meta:
            raise CheckpointError(
                f"{self.path}: no megagoku config in its metadata (the heads' split needs the "
                f"model config): add one with `megagoku convert --input {self.path} --config "
                f"CONFIG --format {OFFICIAL_FORMAT} --output NEW{SUFFIX}`")
        self.config = json.loads(meta["config"])
        try:
            self.model_config = saved_training_config(self.config, f"{self.path}: config").model
            check_released(self.model_config, str(self.path))
            self._sources = our_sources(list(self._file.keys()))
        except (ConfigError, LayoutError) as e:
            raise CheckpointError(str(e)) from None
        self.meta = {"format": OFFICIAL_FORMAT, "config": self.config,
                     "weights": meta.get("weights", "ema"), "step": int(meta.get("step", 0))}
        self.state = {"step": self.meta["step"], "ema_updates": 0}
        self.names = sorted(self._sources)

    def tensor(self, key: str) -> torch.Tensor:
        if not self.has(key):
            raise CheckpointError(f"{self.path}: no tensor {key!r} (an official-layout file "
                                  f"holds weights only)")
        name = key.partition("/")[2]
        try:
            tensor = from_official(self._file.get_tensor, self._sources[name], self.model_config)
        except LayoutError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        return checked_values(self.path, name, tensor, self.allow_nonfinite)

    def tensors(self, prefix: str, names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        names = self.keys(prefix) if names is None else names
        return {name: self.tensor(f"{prefix}/{name}") for name in names}


def _stored(reader, key: str) -> tuple[list[int], torch.dtype]:
    """Shape and dtype of one of our stored tensors, from its file's header (nothing is read)."""
    if isinstance(reader, CheckpointReader):
        path, name = reader.path / reader.index[key], key
    else:
        path, name = reader.path / MODEL_FILE, key.partition("/")[2]
    with safe_open(str(path), framework="pt") as f:
        piece = f.get_slice(name)
        return list(piece.get_shape()), SAFETENSORS_DTYPES[piece.get_dtype()]


def write_official(path: str | Path, out: str | Path, weights: Optional[str] = None,
                   dtype: Optional[str] = None, progress: bool = True) -> Path:
    """A checkpoint, run dir or model directory -> one official-layout file (`out`). `weights`:
    as `weights_kind` resolves it (a checkpoint's EMA by default, a model directory's one kind;
    ValueError for a kind the model directory lacks)."""
    if weights is not None and weights not in WEIGHT_KINDS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_KINDS)}, got {weights!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.suffix != SUFFIX:
        raise ValueError(f"--output {out}: an official-layout file ends in {SUFFIX}")
    if out.exists():
        raise FileExistsError(f"--output {out}: exists; choose a new file")
    found = find_weights(path)
    reader = open_weights(found)
    if isinstance(reader, OfficialFileReader):
        raise ValueError(f"--input {path}: already in the official layout")
    weights = weights_kind(found, weights)
    cfg = saved_training_config(reader.config, f"{found}: config").model
    ours = {name: _stored(reader, f"{weights}/{name}") for name in reader.keys(weights)}
    read = getattr(reader, "read_once", reader.tensor)
    sources = []
    for entry in official_tensors({k: tuple(shape) for k, (shape, _) in ours.items()}, cfg):
        stored = ours[entry.ours][1]
        target = DTYPES[dtype] if dtype is not None and stored.is_floating_point else stored
        sources.append(TensorSource(
            entry.name, list(entry.shape), target,
            lambda entry=entry: to_official(read(f"{weights}/{entry.ours}"), entry, cfg)))
    meta = {"format": OFFICIAL_FORMAT, "config": json.dumps(reader.config), "weights": weights,
            "step": str(reader.step), "source": str(Path(found).resolve())}
    out.parent.mkdir(parents=True, exist_ok=True)
    meter = Progress(sum(s.nbytes for s in sources), f"writing {out.name}") if progress else None
    write_safetensors(out, sources, meta, meter)
    return out


def add_config(path: str | Path, config_path: str | Path, out: str | Path,
               progress: bool = True) -> Path:
    """An official-layout file without our config (weights from elsewhere) -> the same tensors
    with `config_path`'s training config in the metadata, checked against it."""
    out = Path(out)
    if out.suffix != SUFFIX or out.exists():
        raise ValueError(f"--output {out}: must be a new file ending in {SUFFIX}")
    config = load_training_config(config_path)
    check_released(config.model, str(config_path))
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        shapes = {name: (list(f.get_slice(name).get_shape()),
                         SAFETENSORS_DTYPES[f.get_slice(name).get_dtype()]) for name in names}
    our_sources(names)  # a layout error names the tensor
    sources = [TensorSource(name, shape, dtype,
                            lambda name=name: safe_open(str(path), framework="pt").get_tensor(name))
               for name, (shape, dtype) in shapes.items()]
    meta = {"format": OFFICIAL_FORMAT, "config": json.dumps(to_dict(config)), "weights": "ema",
            "step": "0", "source": str(Path(path).resolve())}
    meter = Progress(sum(s.nbytes for s in sources), f"writing {out.name}") if progress else None
    write_safetensors(out, sources, meta, meter)
    return out
