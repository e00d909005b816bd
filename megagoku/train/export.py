"""`megagoku convert`: a training checkpoint (any TP / Ulysses / DP / ZeRO layout) consolidated
into one model directory, and `--inspect` of either.

OUT/model.safetensors   the chosen weights (EMA or raw) under the model's own parameter names, in
                        the chosen dtype
OUT/config.json         {"format": "megagoku-model", "version": 1, "config": <training config>,
                         "weights": "ema", "dtype": "bfloat16", "step": N, "source": <checkpoint>,
                         "xxh3_128": <of model.safetensors>, "bytes": ...}
                        (directories written before xxh3 hold "sha256": still verified)

`megagoku sample` and `checkpoint.init_from` take such a directory like a checkpoint, and a
training run started from it loads it under any layout (the tensors are whole). Tensors are
streamed: each is read (memory-mapped) and written before the next is touched, so converting
Goku-8B needs no more memory than its largest tensor. Nothing here unpickles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Optional

import torch

from megagoku.progress import RateMeter, format_duration
from megagoku.storage import (SAFETENSORS_DTYPES, TORCH_TO_SAFETENSORS, TensorSource,  # noqa: F401
                              entry_checksum, tensor_bytes, write_tensors)
from megagoku.train.checkpoint import (MODEL_CONFIG, MODEL_FILE, MODEL_FORMAT, WEIGHT_KINDS,
                                       CheckpointReader, checked_header, find_checkpoint,
                                       is_model_dir, read_manifest, verify_model_dir)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    """Write a safetensors file one tensor at a time (`storage.write_tensors`: the header first,
    from the shapes alone); returns its xxh3-128. The file appears under its name only when
    complete."""
    return write_tensors(Path(path), sources, metadata,
                         None if progress is None else progress.add).xxh3_128


def tensor_metadata(reader: CheckpointReader, key: str) -> tuple[list[int], torch.dtype]:
    """Shape and dtype of a stored tensor from its file's header: nothing is read."""
    return reader.describe(key)


def consolidate(path: str | Path, out: str | Path, weights: str = "ema",
                dtype: Optional[str] = None, progress: bool = True,
                allow_nonfinite: bool = False) -> Path:
    """A training checkpoint (or a run dir: its newest valid one) -> a model directory. Every
    tensor is checked as it is read (`checkpoint.checked_values`)."""
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_KINDS)}, got {weights!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    ckpt = find_checkpoint(path)
    reader = CheckpointReader(ckpt, verified=True, allow_nonfinite=allow_nonfinite)
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
            "source": str(ckpt.resolve()), "xxh3_128": digest,
            "bytes": (out / MODEL_FILE).stat().st_size, "tensors": len(sources)}
    (out / MODEL_CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def inspect(path: str | Path) -> dict:
    """What a checkpoint or model directory holds, verified: step, layout it was saved under,
    files with sizes and checksums, tensors with shapes and dtypes (from the checked headers).
    Raises CheckpointError for a broken one."""
    path = Path(path)
    if is_model_dir(path):
        meta = verify_model_dir(path)
        header = checked_header(path / MODEL_FILE)
        tensors = {k: _describe(e) for k, e in sorted(header.tensors.items())}
        algorithm, digest = entry_checksum(meta)
        return {"kind": "model", "path": str(path), "step": meta["step"],
                "weights": meta["weights"], "dtype": meta["dtype"], "source": meta["source"],
                "files": {MODEL_FILE: {"bytes": meta["bytes"], algorithm: digest}},
                "tensors": tensors}
    ckpt = find_checkpoint(path)  # verified
    manifest = read_manifest(ckpt)
    reader = CheckpointReader(ckpt, verified=True)
    tensors = {}
    for file in sorted(set(reader.index.values())):
        for key, entry in checked_header(ckpt / file).tensors.items():
            tensors[key] = {**_describe(entry), "file": file}
    saved = reader.state.get("saved_under", {})
    return {"kind": "checkpoint", "path": str(ckpt), "step": reader.step,
            "world_size": saved.get("world_size"), "parallel": saved.get("parallel"),
            "files": manifest, "tensors": dict(sorted(tensors.items()))}


def _describe(entry) -> dict:
    dtype = SAFETENSORS_DTYPES[entry.dtype]
    return {"shape": list(entry.shape), "dtype": str(dtype).removeprefix("torch."),
            "bytes": entry.end - entry.start}
