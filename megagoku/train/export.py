"""`megagoku convert`: a training checkpoint (any TP / Ulysses / DP / ZeRO layout) consolidated
into one model directory, and `--inspect` of either.

OUT/model.safetensors   the chosen weights (EMA or raw) under the model's own parameter names, in
                        the chosen dtype
OUT/config.json         {"format": "megagoku-model", "version": 1, "config": <training config>,
                         "weights": "ema", "dtype": "bfloat16", "step": N, "source": <checkpoint>,
                         "xxh3_128": <of model.safetensors>, "bytes": ...}
                        (directories written before xxh3 hold "sha256": still verified)

`megagoku sample` and `checkpoint.init_from` take such a directory like a checkpoint, and a
training run started from it loads it under any layout (the tensors are whole). A model
directory converts again into another dtype; a cast to a narrower float records in config.json
(`cast`) how many nonzero values became 0 and how many became inf. Tensors are
streamed: each is read (memory-mapped) and written before the next is touched, so converting
Goku-8B needs no more memory than its largest tensor. Nothing here unpickles.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors import safe_open

from megagoku.progress import RateMeter, format_duration
from megagoku.storage import (SAFETENSORS_DTYPES, TORCH_TO_SAFETENSORS, TensorSource,  # noqa: F401
                              entry_checksum, tensor_bytes, write_tensors)
from megagoku.train.checkpoint import (MODEL_CONFIG, MODEL_FILE, MODEL_FORMAT, WEIGHT_KINDS,
                                       CheckpointError, CheckpointReader, checked_header,
                                       checked_values, find_checkpoint, is_model_dir,
                                       read_manifest, verify_model_dir)

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


@dataclass
class CastCounts:
    """What casting to a narrower float did: finite nonzero values that became 0 (underflow) or
    infinite (overflow), out of `values` cast."""

    dtype: str
    values: int = 0
    underflow: int = 0
    overflow: int = 0

    def cast(self, tensor: torch.Tensor, target: torch.dtype) -> torch.Tensor:
        out = tensor.to(target)
        if tensor.is_floating_point() and target != tensor.dtype:
            finite = torch.isfinite(tensor)
            self.values += tensor.numel()
            self.underflow += int((finite & (tensor != 0) & (out == 0)).sum())
            self.overflow += int((finite & torch.isinf(out)).sum())
        return out


def check_output(out: Path) -> Optional[Path]:
    """Refuse an --output that is not a new (or empty) directory, in one line. A folder holding
    only an interrupted convert's `model.safetensors.partial` is ours to replace: returns it."""
    if out.suffix == ".safetensors":
        raise ValueError(f"--output {out}: convert writes a model directory ({MODEL_FILE} + "
                         f"{MODEL_CONFIG}); name the directory, e.g. --output "
                         f"{out.with_suffix('')} (one .safetensors file: --format goku-official)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out}: is a file; choose a new directory")
    if not out.is_dir():
        return None
    partial = out / (MODEL_FILE + ".partial")
    if any(p != partial for p in out.iterdir()):
        raise FileExistsError(f"--output {out}: not empty; choose a new directory")
    return partial if partial.exists() else None


def check_input(path: Path) -> None:
    """One line for an --input that is no checkpoint, run dir or model directory we can name."""
    if not path.exists():
        raise ValueError(f"--input {path}: no such file or directory")
    if (path / (MODEL_FILE + ".partial")).exists() and not is_model_dir(path):
        raise ValueError(f"--input {path}: holds only {MODEL_FILE}.partial, the output of an "
                         "interrupted convert; run that convert again")
    if path.is_file():
        raise ValueError(f"--input {path}: a file; convert reads a checkpoint, run directory or "
                         "model directory (sample and checkpoint.init_from read an "
                         "official-layout .safetensors file as it is)")


@dataclass
class Source:
    """What a model directory is made from: a checkpoint's EMA or raw weights, or a model
    directory's one kind (re-cast)."""

    path: Path
    config: dict
    step: int
    weights: str
    tensors: list[TensorSource]


def open_source(path: Path, weights: Optional[str], allow_nonfinite: bool = False) -> Source:
    """The tensors to write, from a checkpoint or run dir (`weights`: ema by default) or a model
    directory (its own kind; asking for the other is an error); each checked as it is read
    (`checkpoint.checked_values`)."""
    if is_model_dir(path):
        meta = verify_model_dir(path)
        if weights is not None and weights != meta["weights"]:
            raise ValueError(f"--weights {weights}: {path} is a model directory of "
                             f"{meta['weights']} weights only (convert the checkpoint it came "
                             f"from, {meta['source']}, with --weights {weights})")
        file = path / MODEL_FILE

        def read(name: str) -> torch.Tensor:
            with safe_open(str(file), framework="pt") as f:  # mapped only while read
                return checked_values(file, name, f.get_tensor(name), allow_nonfinite)

        tensors = [TensorSource(name, list(entry.shape), SAFETENSORS_DTYPES[entry.dtype],
                                lambda name=name: read(name))
                   for name, entry in sorted(checked_header(file).tensors.items())]
        return Source(path, meta["config"], int(meta.get("step", 0)), meta["weights"], tensors)
    weights = weights or "ema"
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_KINDS)}, got {weights!r}")
    reader = CheckpointReader(find_checkpoint(path), verified=True,
                              allow_nonfinite=allow_nonfinite)
    tensors = []
    for name in reader.keys(weights):
        shape, stored = tensor_metadata(reader, f"{weights}/{name}")
        tensors.append(TensorSource(name, shape, stored,
                                    lambda key=f"{weights}/{name}": reader.read_once(key)))
    return Source(reader.path, reader.config, reader.step, weights, tensors)


def consolidate(path: str | Path, out: str | Path, weights: Optional[str] = None,
                dtype: Optional[str] = None, progress: bool = True,
                allow_nonfinite: bool = False) -> Path:
    """A training checkpoint (or a run dir: its newest valid one) -> a model directory; or a
    model directory -> another in `dtype`. `weights`: ema (the default) or model for a
    checkpoint; a model directory has one kind. Every tensor is checked as it is read
    (`checkpoint.checked_values`). A folder holding only the partial output of an interrupted
    convert is replaced."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path, out = Path(path), Path(out)
    check_input(path)
    partial = check_output(out)
    source = open_source(path, weights, allow_nonfinite)
    if partial is not None:
        print(f"replacing {partial}, left by an interrupted convert", file=sys.stderr)
        partial.unlink()
    out.mkdir(parents=True, exist_ok=True)
    counts = CastCounts(dtype) if dtype is not None else None
    sources = []
    for s in source.tensors:
        if counts is None or not s.dtype.is_floating_point:
            sources.append(s)
            continue
        target = DTYPES[dtype]
        cast = lambda read=s.read, target=target: counts.cast(read(), target)  # noqa: E731
        sources.append(TensorSource(s.name, s.shape, target, cast))
    total = sum(s.nbytes for s in sources)
    meter = Progress(total, f"consolidating {source.path.name}") if progress else None
    digest = write_safetensors(out / MODEL_FILE, sources, {"format": MODEL_FORMAT,
                                                           "weights": source.weights}, meter)
    dtypes = sorted({str(s.dtype).removeprefix("torch.") for s in sources})
    meta = {"format": MODEL_FORMAT, "version": 1, "config": source.config,
            "weights": source.weights, "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "step": source.step, "source": str(source.path.resolve()), "xxh3_128": digest,
            "bytes": (out / MODEL_FILE).stat().st_size, "tensors": len(sources)}
    if counts is not None:
        meta["cast"] = {"dtype": dtype, "values": counts.values, "underflow": counts.underflow,
                        "overflow": counts.overflow}
    (out / MODEL_CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def inspect(path: str | Path) -> dict:
    """What a checkpoint or model directory holds, verified: step, layout it was saved under,
    files with sizes and checksums, tensors with shapes and dtypes (from the checked headers).
    Raises CheckpointError for a broken one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if (path / (MODEL_FILE + ".partial")).exists() and not is_model_dir(path):
        raise CheckpointError(f"{path}: holds only {MODEL_FILE}.partial, the output of an "
                              "interrupted convert (incomplete: run that convert again)")
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
