"""`megagoku convert`: a training checkpoint (any TP / Ulysses / DP / ZeRO layout) consolidated
into one model directory, and `--inspect` of either.

OUT/model.safetensors   the chosen weights (EMA or raw) under the model's own parameter names, in
                        the chosen dtype
OUT/config.json         {"format": "megagoku-model", "version": 1, "config": <training config>,
                         "weights": "ema", "dtype": "bfloat16", "step": N, "source": <checkpoint>,
                         "sha256": <of model.safetensors>, "bytes": ...}

`megagoku sample` and `checkpoint.init_from` take such a directory like a checkpoint, and a
training run started from it loads it under any layout (the tensors are whole). Tensors are
streamed: each is read (memory-mapped) and written before the next is touched, so converting
Goku-8B needs no more memory than its largest tensor. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from safetensors import safe_open

from megagoku.progress import RateMeter, format_duration
from megagoku.train.checkpoint import (MODEL_CONFIG, MODEL_FILE, MODEL_FORMAT, WEIGHT_KINDS,
                                       CheckpointError, CheckpointReader, find_checkpoint,
                                       is_model_dir, verify_checkpoint, verify_model_dir)

# safetensors dtype names <-> torch dtypes
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16,
                      "F16": torch.float16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TensorSource:
    """One tensor to write: its name, shape, dtype, and how to read it when its turn comes."""

    name: str
    shape: list[int]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.dtype)


def tensor_bytes(shape: list[int], dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


class Progress:
    """A line every few seconds: bytes written, rate and ETA (to stderr)."""

    def __init__(self, total: int, label: str, every_s: float = 2.0, stream=sys.stderr):
        self.total, self.label, self.every_s, self.stream = total, label, every_s, stream
        self.done, self.meter, self.last = 0, RateMeter(total), 0.0

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        now = self.meter.elapsed()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate, eta = self.meter.measure(self.done)
            print(f"{self.label}: {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB, "
                  f"{rate / 1e6:.0f} MB/s, ETA {format_duration(eta)}", file=self.stream,
                  flush=True)


def write_safetensors(path: Path, sources: Iterable[TensorSource],
                      metadata: Optional[dict[str, str]] = None,
                      progress: Optional[Progress] = None) -> str:
    """Write a safetensors file one tensor at a time (the header first, from the shapes alone);
    returns its sha256. The file appears under its name only when complete."""
    sources = sorted(sources, key=lambda s: s.name)
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for s in sources:
        header[s.name] = {"dtype": TORCH_TO_SAFETENSORS[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    digest = hashlib.sha256()
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        for chunk in (struct.pack("<Q", len(text)), text):
            f.write(chunk)
            digest.update(chunk)
        for s in sources:
            tensor = s.read().to(s.dtype).contiguous()
            if list(tensor.shape) != list(s.shape):
                raise CheckpointError(f"{s.name}: read {list(tensor.shape)}, expected {s.shape}")
            data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
            f.write(data)
            digest.update(data)
            if progress is not None:
                progress.add(len(data))
            del tensor, data
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return digest.hexdigest()


def tensor_metadata(reader: CheckpointReader, key: str) -> tuple[list[int], torch.dtype]:
    """Shape and dtype of a stored tensor from its file's header: nothing is read."""
    with safe_open(str(reader.path / reader.index[key]), framework="pt") as f:
        piece = f.get_slice(key)
        return list(piece.get_shape()), SAFETENSORS_DTYPES[piece.get_dtype()]


def consolidate(path: str | Path, out: str | Path, weights: str = "ema",
                dtype: Optional[str] = None, progress: bool = True) -> Path:
    """A training checkpoint (or a run dir: its newest valid one) -> a model directory."""
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_KINDS)}, got {weights!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    ckpt = find_checkpoint(path)
    reader = CheckpointReader(ckpt, verified=True)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--output {out}: not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    sources = []
    for name in reader.keys(weights):
        shape, stored = tensor_metadata(reader, f"{weights}/{name}")
        target = DTYPES[dtype] if dtype is not None and stored.is_floating_point else stored
        sources.append(TensorSource(name, shape, target,
                                    lambda key=f"{weights}/{name}": reader.read_once(key)))
    total = sum(s.nbytes for s in sources)
    meter = Progress(total, f"consolidating {ckpt.name}") if progress else None
    digest = write_safetensors(out / MODEL_FILE, sources, {"format": MODEL_FORMAT,
                                                           "weights": weights}, meter)
    dtypes = sorted({str(s.dtype).removeprefix("torch.") for s in sources})
    meta = {"format": MODEL_FORMAT, "version": 1, "config": reader.config, "weights": weights,
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes, "step": reader.step,
            "source": str(ckpt.resolve()), "sha256": digest,
            "bytes": (out / MODEL_FILE).stat().st_size, "tensors": len(sources)}
    (out / MODEL_CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def inspect(path: str | Path) -> dict:
    """What a checkpoint or model directory holds, verified: step, layout it was saved under,
    files with sizes and checksums, tensors with shapes and dtypes. Raises CheckpointError for a
    broken one."""
    path = Path(path)
    if is_model_dir(path):
        meta = verify_model_dir(path)
        with safe_open(str(path / MODEL_FILE), framework="pt") as f:
            tensors = {k: _describe(f.get_slice(k)) for k in sorted(f.keys())}
        return {"kind": "model", "path": str(path), "step": meta["step"],
                "weights": meta["weights"], "dtype": meta["dtype"], "source": meta["source"],
                "files": {MODEL_FILE: {"bytes": meta["bytes"], "sha256": meta["sha256"]}},
                "tensors": tensors}
    ckpt = find_checkpoint(path)
    manifest = verify_checkpoint(ckpt)
    reader = CheckpointReader(ckpt, verified=True)
    tensors = {}
    for file in sorted(set(reader.index.values())):
        with safe_open(str(ckpt / file), framework="pt") as f:
            for key in f.keys():
                tensors[key] = {**_describe(f.get_slice(key)), "file": file}
    saved = reader.state.get("saved_under", {})
    return {"kind": "checkpoint", "path": str(ckpt), "step": reader.step,
            "world_size": saved.get("world_size"), "parallel": saved.get("parallel"),
            "files": manifest, "tensors": dict(sorted(tensors.items()))}


def _describe(piece) -> dict:
    shape = list(piece.get_shape())
    dtype = SAFETENSORS_DTYPES[piece.get_dtype()]
    return {"shape": shape, "dtype": str(dtype).removeprefix("torch."),
            "bytes": tensor_bytes(shape, dtype)}
