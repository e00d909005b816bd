"""The on-disk checkpoint: what a committed checkpoint holds, how it is written, verified, found
and read. (`train/checkpointer.py` decides when and runs the writes in the background;
`train/train_state.py` gathers the tensors from the model and optimizer and puts them back.)

RUN_DIR/checkpoints/step_00001000/
    rank-00000-of-00002.safetensors   the logical tensors rank 0 wrote (see below)
    rank-00001-of-00002.safetensors   ... rank 1's
    config.yaml                       the full training config: a checkpoint describes itself
    state.json                        step, scheduler, loader, every rank's RNG, the key index
    manifest.json                     bytes and sha256 of every file above; written last

Tensors are stored per *logical* tensor, whole, under keys `model/<name>`, `ema/<name>`,
`optim.exp_avg/<name>`, `optim.exp_avg_sq/<name>`: never as a rank's TP piece or ZeRO partition.
That is what makes a checkpoint load under any (TP, Ulysses, DP, ZeRO) layout: each rank reads
the whole tensor (memory-mapped) and keeps its own piece. The writing is spread: every logical
tensor is written by exactly one rank, chosen so that ranks write about the same number of bytes
(`assign_writers`), so no rank holds or writes the whole model.

Commit protocol (every rank shares the checkpoint filesystem, as on any cluster):
1. every rank writes its file into `.tmp_step_N/`, fsyncs it, then writes `rank-R.json` (its
   file's size and sha256, its keys, its RNG state) and fsyncs that;
2. rank 0 waits for all ranks' markers, writes config.yaml and state.json, then manifest.json,
   fsyncs, and renames `.tmp_step_N` to `step_N` (atomic on POSIX), then fsyncs the parent.
A crash at any point leaves either no `step_N` or a complete one; a `step_N` whose files were
later truncated or altered fails verification and is passed over by `find_checkpoint`.

Nothing here unpickles: tensors are safetensors, everything else JSON/YAML.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

META_FILES = ("config.yaml", "state.json")
WEIGHT_KINDS = ("model", "ema")
# A consolidated model directory (`megagoku convert`, train/export.py): one kind of weights.
MODEL_FILE, MODEL_CONFIG, MODEL_FORMAT = "model.safetensors", "config.json", "megagoku-model"


class CheckpointError(RuntimeError):
    pass


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file_name(rank: int, world: int) -> str:
    return f"rank-{rank:05d}-of-{world:05d}.safetensors"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def assign_writers(sizes: dict[str, int], world: int) -> dict[str, int]:
    """Which rank writes each logical tensor: largest first to the rank with the fewest bytes so
    far (ties by rank), so every rank computes the same answer from the same sizes."""
    load = [0] * world
    owner = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[name] = rank
        load[rank] += sizes[name]
    return owner


def write_rank_part(tmp: Path, rank: int, world: int, tensors: dict[str, torch.Tensor],
                    rng: dict) -> dict:
    """Step 1 of the commit for one rank: its tensors, then its marker. Returns the marker."""
    tmp.mkdir(parents=True, exist_ok=True)
    name = rank_file_name(rank, world)
    save_file(tensors, str(tmp / name))
    fsync_file(tmp / name)
    marker = {"file": name, "bytes": (tmp / name).stat().st_size, "sha256": sha256_of(tmp / name),
              "keys": sorted(tensors), "rng": rng}
    marker_path = tmp / f"rank-{rank:05d}.json"
    partial = marker_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(marker))
    fsync_file(partial)
    os.replace(partial, marker_path)  # a marker is whole or absent
    return marker


def wait_for_markers(tmp: Path, world: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        paths = [tmp / f"rank-{r:05d}.json" for r in range(world)]
        missing = [p.name for p in paths if not p.exists()]
        if not missing:
            return [json.loads(p.read_text()) for p in paths]
        failed = sorted(tmp.glob("rank-*.failed"))
        if failed:
            raise CheckpointError(f"{failed[0]}: {json.loads(failed[0].read_text())}; "
                                  "not committed")
        if time.monotonic() > deadline:
            raise CheckpointError(f"{tmp}: ranks never finished writing ({', '.join(missing)} "
                                  f"missing after {timeout_s:.0f} s); not committed")
        time.sleep(0.02)


def commit(root: Path, step: int, world: int, config: dict, state: dict,
           timeout_s: float = 1800.0) -> Path:
    """Step 2, on rank 0: once every rank's part is on disk, the metadata, the manifest and the
    rename that makes the checkpoint exist."""
    tmp = root / f".tmp_{step_dir_name(step)}"
    markers = wait_for_markers(tmp, world, timeout_s)
    state = {**state, "step": step, "world_size": world,
             "rng": [m["rng"] for m in markers],
             "index": {key: m["file"] for m in markers for key in m["keys"]}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    manifest = {m["file"]: {"bytes": m["bytes"], "sha256": m["sha256"]} for m in markers}
    for name in META_FILES:
        fsync_file(tmp / name)
        manifest[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_of(tmp / name)}
    for r in range(world):
        (tmp / f"rank-{r:05d}.json").unlink()
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    fsync_file(tmp / "manifest.json")
    fsync_dir(tmp)
    final = root / step_dir_name(step)
    old = root / f".old_{step_dir_name(step)}"
    if final.exists():  # re-saving a step: a good copy exists at every moment
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_parts(root: Path) -> None:
    """Half-written parts left by a run that crashed mid-save (rank 0, before any save)."""
    for stale in list(root.glob(".tmp_step_*")) + list(root.glob(".old_step_*")):
        log.warning("removing %s, left by a save that never committed", stale)
        shutil.rmtree(stale, ignore_errors=True)


def prune(root: Path, keep_last: int, keep_every: int) -> list[Path]:
    """Delete committed checkpoints beyond the newest `keep_last`, except every `keep_every`-th
    step (0: none kept for that reason). Returns what was removed."""
    steps = sorted(committed_steps(root))
    keep = set(steps[-keep_last:]) if keep_last > 0 else set(steps)
    keep |= {s for s in steps if keep_every and s % keep_every == 0}
    removed = []
    for step in steps:
        if step not in keep:
            path = root / step_dir_name(step)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def committed_steps(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    steps = []
    for path in root.glob("step_*"):
        try:
            steps.append(int(path.name[len("step_"):]))
        except ValueError:
            continue
    return steps


def verify_checkpoint(path: Path) -> dict:
    """The manifest of a complete, unaltered checkpoint; else CheckpointError naming the file
    that is missing, truncated or altered."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = {name: (int(e["bytes"]), str(e["sha256"])) for name, e in manifest.items()}
        if not all(name in entries for name in META_FILES):
            raise KeyError(", ".join(n for n in META_FILES if n not in entries))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{manifest_path}: missing, unreadable or incomplete manifest "
                              f"({type(e).__name__}: {e})") from None
    for name, (size, digest) in entries.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, manifest says {size}")
        if sha256_of(file) != digest:
            raise CheckpointError(f"{file}: checksum differs from the manifest")
    try:  # state.json is verified now: every tensor file it indexes must be verified too
        unlisted = sorted(set(map(str, json.loads((path / "state.json").read_text())["index"]
                                  .values())) - set(entries))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path / 'state.json'}: no tensor index ({type(e).__name__}: "
                              f"{e})") from None
    if unlisted:
        raise CheckpointError(f"{manifest_path}: incomplete manifest (no entry for "
                              f"{', '.join(unlisted)})")
    return manifest


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory (verified), or a run directory -> its newest valid checkpoint,
    saying which broken ones it passed over."""
    path = Path(path)
    if (path / "manifest.json").exists() or (path / "state.json").exists():
        verify_checkpoint(path)
        return path
    root = path / "checkpoints"
    steps = sorted(committed_steps(root), reverse=True)
    if not steps:
        raise CheckpointError(f"{path}: no checkpoint here (expected {root}/step_*)")
    for step in steps:
        candidate = root / step_dir_name(step)
        try:
            verify_checkpoint(candidate)
            return candidate
        except CheckpointError as e:
            log.warning("skipping broken checkpoint: %s", e)
    raise CheckpointError(f"{path}: every checkpoint is broken ({len(steps)} tried)")


class CheckpointReader:
    """A verified checkpoint: its config, its state, and its tensors by key, read lazily (each
    rank memory-maps only the tensors it asks for)."""

    def __init__(self, path: str | Path, verified: bool = False):
        self.path = Path(path)
        if not verified:
            verify_checkpoint(self.path)
        self.config = yaml.safe_load((self.path / "config.yaml").read_text())
        self.state = json.loads((self.path / "state.json").read_text())
        self.index: dict[str, str] = self.state["index"]
        self._files: dict[str, object] = {}

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def keys(self, prefix: str) -> list[str]:
        """Logical tensor names stored under `prefix` ('model', 'ema', 'optim.exp_avg', ...)."""
        return sorted(k[len(prefix) + 1:] for k in self.index if k.startswith(prefix + "/"))

    def has(self, key: str) -> bool:
        return key in self.index

    def tensor(self, key: str) -> torch.Tensor:
        file = self.index.get(key)
        if file is None:
            raise CheckpointError(f"{self.path}: no tensor {key!r} in state.json's index")
        try:
            handle = self._files.get(file)
            if handle is None:
                handle = self._files[file] = safe_open(str(self.path / file), framework="pt")
            return handle.get_tensor(key)
        except (SafetensorError, OSError) as e:  # a malformed file the checksums agree with
            raise CheckpointError(f"{self.path / file}: unreadable tensor {key!r} ({e})") from None

    def tensors(self, prefix: str, names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        names = self.keys(prefix) if names is None else names
        return {name: self.tensor(f"{prefix}/{name}") for name in names}

    def read_once(self, key: str) -> torch.Tensor:
        """The tensor, with its file mapped only while it is read. `tensor` keeps files mapped
        for the many reads of a restore; a pass over a whole checkpoint (conversion) would keep
        every page it touched resident: 18.5 GB of RSS for Goku-8B's EMA, measured."""
        file = self.index.get(key)
        if file is None:
            raise CheckpointError(f"{self.path}: no tensor {key!r} in state.json's index")
        with safe_open(str(self.path / file), framework="pt") as f:
            return f.get_tensor(key)


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MODEL_FILE).is_file() and (Path(path) / MODEL_CONFIG).is_file()


def verify_model_dir(path: Path) -> dict:
    """The metadata of a complete, unaltered model directory; else CheckpointError."""
    meta_path = path / MODEL_CONFIG
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != MODEL_FORMAT:
            raise KeyError(f"format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
        size, digest = int(meta["bytes"]), str(meta["sha256"])
        meta["config"], meta["weights"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: not a megagoku model description "
                              f"({type(e).__name__}: {e})") from None
    file = path / MODEL_FILE
    if file.stat().st_size != size:
        raise CheckpointError(f"{file}: {file.stat().st_size} bytes, {MODEL_CONFIG} says {size}")
    if sha256_of(file) != digest:
        raise CheckpointError(f"{file}: checksum differs from {MODEL_CONFIG}")
    return meta


class ModelDirReader:
    """A consolidated model directory read like a checkpoint that holds weights only: its one
    kind of weights serves as both `model/` and `ema/`, there is no optimizer state."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = verify_model_dir(self.path)
        self.config = self.meta["config"]
        self.state = {"step": self.meta.get("step", 0), "ema_updates": 0}
        self._file = safe_open(str(self.path / MODEL_FILE), framework="pt")
        self.names = sorted(self._file.keys())

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def keys(self, prefix: str) -> list[str]:
        return list(self.names) if prefix in WEIGHT_KINDS else []

    def has(self, key: str) -> bool:
        prefix, _, name = key.partition("/")
        return prefix in WEIGHT_KINDS and name in self.names

    def tensor(self, key: str) -> torch.Tensor:
        if not self.has(key):
            raise CheckpointError(f"{self.path}: no tensor {key!r} (a model directory holds "
                                  f"weights only)")
        return self._file.get_tensor(key.partition("/")[2])

    def tensors(self, prefix: str, names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        names = self.keys(prefix) if names is None else names
        return {name: self.tensor(f"{prefix}/{name}") for name in names}


def find_weights(path: str | Path) -> Path:
    """A model directory (verified), an official-layout file (train/official.py) or a
    checkpoint / run dir (its newest valid checkpoint)."""
    from megagoku.train.official import is_official_file

    if is_model_dir(path):
        verify_model_dir(Path(path))
        return Path(path)
    if is_official_file(path):
        return Path(path)
    return find_checkpoint(path)


def open_weights(path: str | Path) -> "CheckpointReader | ModelDirReader":
    """A reader for a path `find_weights` returned (already verified)."""
    from megagoku.train.official import OfficialFileReader, is_official_file

    if is_official_file(path):
        return OfficialFileReader(path)
    return ModelDirReader(path) if is_model_dir(path) else CheckpointReader(path, verified=True)


def load_checkpoint(path: str | Path, weights: str = "ema"
                    ) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(config dict, whole state dict of the chosen weights, where they came from), for sampling.
    `path` is a checkpoint, a run directory (its newest valid checkpoint) or a model directory
    written by `megagoku convert` (its one kind of weights, whatever `weights` says)."""
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_KINDS)}, got {weights!r}")
    found = find_weights(path)
    reader = open_weights(found)
    if isinstance(reader, ModelDirReader):
        weights = reader.meta["weights"]
    return reader.config, reader.tensors(weights), found
