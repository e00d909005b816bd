"""The on-disk checkpoint: what a committed checkpoint holds, how it is written, verified, found
and read. (`train/checkpointer.py` decides when and runs the writes in the background;
`train/train_state.py` gathers the tensors from the model and optimizer and puts them back.)

RUN_DIR/checkpoints/step_00001000/
    rank-00000-of-00002.safetensors   the logical tensors rank 0 wrote (see below)
    rank-00001-of-00002.safetensors   ... rank 1's
    config.yaml                       the full training config: a checkpoint describes itself
    state.json                        step, scheduler, loader, every rank's RNG, the key index
    manifest.json                     bytes and checksum (xxh3-128) of every file above; last

Tensors are stored per *logical* tensor, whole, under keys `model/<name>`, `ema/<name>`,
`optim.exp_avg/<name>`, `optim.exp_avg_sq/<name>`: never as a rank's TP piece or ZeRO partition.
That is what makes a checkpoint load under any (TP, Ulysses, DP, ZeRO) layout: each rank reads
the whole tensor (memory-mapped) and keeps its own piece. The writing is spread: every logical
tensor is written by exactly one rank, chosen so that ranks write about the same number of bytes
(`assign_writers`), so no rank holds or writes the whole model.

Commit protocol (every rank shares the checkpoint filesystem, as on any cluster):
1. every rank writes its file into `.tmp_step_N/` and fsyncs it, then hands rank 0 its marker
   (its file's size and checksum, its keys, its RNG state): through the process group's store
   when there is one (`train/checkpointer.py`; rank 0 blocks in the store, no polling of a
   parallel filesystem), else as `rank-R.json` in the folder (fsynced; rank 0 polls for them);
2. rank 0, once every rank's marker is in, writes config.yaml and state.json, then
   manifest.json, fsyncs, and renames `.tmp_step_N` to `step_N` (atomic on POSIX), then fsyncs
   the parent.
A crash at any point leaves either no `step_N` or a complete one; a `step_N` whose files were
later truncated or altered fails verification and is passed over by `find_checkpoint`.

Verified by content on load (`verify_checkpoint`, `CheckpointReader`): sizes and checksums
(xxh3-128, computed while writing; sha256 of older checkpoints still verifies), every file name
of the manifest and of state.json's index a plain name inside the folder (no `../`, no
symlinks), every safetensors header checked against its file (`storage.read_header`) and against
the index, floating-point tensors only, and no NaN or inf in a tensor read unless asked
(`allow_nonfinite`). Every failure is one CheckpointError line naming the file. Verification
splits over ranks: rank r of W checks every W-th tensor file (`verify_checkpoint(path, r, W)`).

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
from typing import Callable, Iterable, Mapping, Optional

import torch
import yaml
from safetensors import SafetensorError, safe_open

from megagoku.storage import (FLOAT_DTYPES, SAFETENSORS_DTYPES, TensorFileError, Written,
                              entry_checksum, file_checksum, read_header, write_tensors)
from megagoku.launch import heartbeat

log = logging.getLogger(__name__)

META_FILES = ("config.yaml", "state.json")
WEIGHT_KINDS = ("model", "ema")
# A consolidated model directory (`megagoku convert`, train/export.py): one kind of weights.
MODEL_FILE, MODEL_CONFIG, MODEL_FORMAT = "model.safetensors", "config.json", "megagoku-model"


NONFINITE_HINT = ("--allow-nonfinite (sample, convert) or checkpoint.allow_nonfinite: true "
                  "(train) loads it anyway")


class CheckpointError(RuntimeError):
    pass


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file_name(rank: int, world: int) -> str:
    return f"rank-{rank:05d}-of-{world:05d}.safetensors"


def sha256_of(path: Path) -> str:
    """The checksum checkpoints had before xxh3-128 (what `megagoku bench checkpoint` compares
    against)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
            heartbeat.progress("checksum")  # hashing a large file is not a hang
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    """A manifest entry for a file written otherwise than through `storage.write_tensors`."""
    return {"bytes": path.stat().st_size, "xxh3_128": file_checksum(path)}


def save_file(tensors: dict[str, torch.Tensor], path: str) -> Written:
    """One rank's tensor file (`storage.write_tensors`: streamed, checksummed as written, fsynced,
    with the umask's permissions)."""
    return write_tensors(Path(path), tensors)


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
                    rng: dict, marker_file: bool = True) -> dict:
    """Step 1 of the commit for one rank: its tensors, then (`marker_file`) its marker file.
    Returns the marker (the caller hands it over otherwise)."""
    tmp.mkdir(parents=True, exist_ok=True)
    name = rank_file_name(rank, world)
    written = save_file(tensors, str(tmp / name))
    heartbeat.progress("save")
    marker = {"file": name, "bytes": written.bytes, "xxh3_128": written.xxh3_128,
              "keys": sorted(tensors), "rng": rng,
              "written_at": time.time()}  # wall clock: the commit's latency after the last part
    if not marker_file:
        return marker
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
           timeout_s: float = 1800.0, markers: Optional[list[dict]] = None) -> Path:
    """Step 2, on rank 0: once every rank's part is on disk, the metadata, the manifest and the
    rename that makes the checkpoint exist. `markers`: every rank's, when the caller collected
    them (through the process group's store, or `wait_for_markers`); None: wait for the marker
    files here."""
    tmp = root / f".tmp_{step_dir_name(step)}"
    if markers is None:
        markers = wait_for_markers(tmp, world, timeout_s)
    state = {**state, "step": step, "world_size": world,
             "rng": [m["rng"] for m in markers],
             "index": {key: m["file"] for m in markers for key in m["keys"]}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    manifest = {m["file"]: {"bytes": m["bytes"], "xxh3_128": m["xxh3_128"]} for m in markers}
    for name in META_FILES:
        fsync_file(tmp / name)
        manifest[name] = file_entry(tmp / name)
    for r in range(world):
        (tmp / f"rank-{r:05d}.json").unlink(missing_ok=True)
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


def plain_name(name: object, where: Path) -> str:
    """A file name a checkpoint's manifest or index may hold: a name inside the folder, nothing
    that leads out of it (`../outside.safetensors`, `/etc/x`, `a/b`)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\\" in name or "\0" in name:
        raise CheckpointError(f"{where}: file name {name!r} is not a plain name inside the "
                              "checkpoint folder; refused")
    return name


def read_manifest(path: Path) -> dict[str, dict]:
    """The manifest's entries (name -> {"bytes", checksum}), every name plain; CheckpointError
    naming manifest.json otherwise."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        for e in manifest.values():
            int(e["bytes"]), entry_checksum(e)
        if not all(name in manifest for name in META_FILES):
            raise KeyError(", ".join(n for n in META_FILES if n not in manifest))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{manifest_path}: missing, unreadable or incomplete manifest "
                              f"({type(e).__name__}: {e})") from None
    for name in manifest:
        plain_name(name, manifest_path)
    return manifest


def check_file(file: Path, entry: Mapping) -> None:
    """One file against its manifest entry: a regular file (not a link out of the folder), its
    size, then its checksum."""
    if file.is_symlink():
        raise CheckpointError(f"{file}: a symbolic link; a checkpoint holds its own files")
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    size = int(entry["bytes"])
    if file.stat().st_size != size:
        raise CheckpointError(f"{file}: {file.stat().st_size} bytes, manifest says {size}")
    algorithm, digest = entry_checksum(entry)
    if file_checksum(file, algorithm, on_chunk=lambda: heartbeat.progress("checksum")) != digest:
        raise CheckpointError(f"{file}: checksum differs from the manifest")


def checked_header(file: Path, keys: Optional[set[str]] = None):
    """The file's safetensors header, checked (`storage.read_header`), holding floating-point
    tensors only and, given `keys`, exactly those."""
    try:
        header = read_header(file)
    except TensorFileError as e:
        raise CheckpointError(str(e)) from None
    for key, entry in header.tensors.items():
        if entry.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{file}: tensor {key} is stored as {entry.dtype}; a megagoku "
                                  "checkpoint holds floating-point tensors only (relabelled, or "
                                  "not one of ours)")
    if keys is not None and set(header.tensors) != keys:
        extra, absent = sorted(set(header.tensors) - keys), sorted(keys - set(header.tensors))
        raise CheckpointError(f"{file}: its tensors differ from state.json's index (not in the "
                              f"index: {extra[:3]}; missing: {absent[:3]})")
    return header


def read_index(path: Path) -> dict[str, str]:
    """state.json's key -> file index, every file a plain name."""
    try:
        index = json.loads((path / "state.json").read_text())["index"]
        if not isinstance(index, dict):
            raise TypeError(f"index is a {type(index).__name__}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path / 'state.json'}: no tensor index ({type(e).__name__}: "
                              f"{e})") from None
    for name in set(index.values()):
        plain_name(name, path / "state.json")
    return index


def tensor_files(manifest: Mapping[str, dict]) -> list[str]:
    """The manifest's tensor files, in the order that shares them out over ranks."""
    return sorted(name for name in manifest if name not in META_FILES)


def verify_checkpoint(path: Path, rank: int = 0, world: int = 1) -> dict:
    """The manifest of a complete, unaltered checkpoint; else CheckpointError naming the file
    that is missing, truncated, altered or forged. Over `world` ranks, rank `rank` checks the
    metadata and every `world`-th tensor file: called by every rank, they check it all."""
    path = Path(path)
    manifest = read_manifest(path)
    for name in META_FILES:  # state.json is read next: verified first
        check_file(path / name, manifest[name])
    index = read_index(path)
    unlisted = sorted(set(index.values()) - set(manifest))
    if unlisted:
        raise CheckpointError(f"{path / 'manifest.json'}: incomplete manifest (no entry for "
                              f"{', '.join(unlisted)})")
    for name in tensor_files(manifest)[rank::world]:
        check_file(path / name, manifest[name])
        checked_header(path / name, {k for k, f in index.items() if f == name})
    return manifest


def checkpoint_candidates(path: str | Path) -> tuple[list[Path], bool]:
    """(checkpoints to try, newest first; whether `path` named one checkpoint): a checkpoint
    directory, or a run directory's committed checkpoints. CheckpointError when there is none."""
    path = Path(path)
    if (path / "manifest.json").exists() or (path / "state.json").exists():
        return [path], True
    root = path / "checkpoints"
    steps = sorted(committed_steps(root), reverse=True)
    if not steps:
        raise CheckpointError(f"{path}: no checkpoint here (expected {root}/step_*)")
    return [root / step_dir_name(step) for step in steps], False


def first_valid(path: str | Path, candidates: list[Path], named: bool,
                verify: Callable[[Path], None] = verify_checkpoint) -> Path:
    """The first candidate that `verify` passes, saying which broken ones it passed over; a
    checkpoint named by the user must pass."""
    for candidate in candidates:
        try:
            verify(candidate)
            return candidate
        except CheckpointError as e:
            if named:
                raise
            log.warning("skipping broken checkpoint: %s", e)
    raise CheckpointError(f"{path}: every checkpoint is broken ({len(candidates)} tried)")


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory (verified), or a run directory -> its newest valid checkpoint,
    saying which broken ones it passed over. (One process checks every file; a process group
    shares the work: `train/run_dir.py`.)"""
    candidates, named = checkpoint_candidates(path)
    return first_valid(path, candidates, named)


def _unreadable(file: Path, error: Exception, key: Optional[str] = None) -> CheckpointError:
    what = f"tensor {key}: " if key else ""
    text = " ".join(str(error).split()) or type(error).__name__  # one line
    return CheckpointError(f"{file}: {what}cannot read ({text})")


def checked_values(file: Path, key: str, tensor: torch.Tensor, allow_nonfinite: bool
                   ) -> torch.Tensor:
    """A tensor read from a checkpoint or model directory: floating point (what we store), and
    finite unless `allow_nonfinite`."""
    if not tensor.is_floating_point():
        raise CheckpointError(f"{file}: tensor {key} is {str(tensor.dtype).removeprefix('torch.')}"
                              "; a megagoku checkpoint holds floating-point tensors only")
    if not allow_nonfinite:
        bad = tensor.numel() - int(torch.isfinite(tensor).sum())
        if bad:
            raise CheckpointError(f"{file}: tensor {key} holds {bad} non-finite value(s) (NaN "
                                  f"or inf); refused: {NONFINITE_HINT}")
    return tensor


class CheckpointReader:
    """A verified checkpoint: its config, its state, and its tensors by key, read lazily (each
    rank memory-maps only the tensors it asks for), each checked (`checked_values`)."""

    def __init__(self, path: str | Path, verified: bool = False, allow_nonfinite: bool = False):
        self.path = Path(path)
        self.allow_nonfinite = allow_nonfinite
        if not verified:
            verify_checkpoint(self.path)
        try:
            self.config = yaml.safe_load((self.path / "config.yaml").read_text())
            self.state = json.loads((self.path / "state.json").read_text())
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise CheckpointError(f"{self.path}: unreadable config.yaml or state.json "
                                  f"({type(e).__name__})") from None
        self.index: dict[str, str] = read_index(self.path)
        self._files: dict[str, object] = {}

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def keys(self, prefix: str) -> list[str]:
        """Logical tensor names stored under `prefix` ('model', 'ema', 'optim.exp_avg', ...)."""
        return sorted(k[len(prefix) + 1:] for k in self.index if k.startswith(prefix + "/"))

    def has(self, key: str) -> bool:
        return key in self.index

    def _file(self, key: str) -> str:
        file = self.index.get(key)
        if file is None:
            raise CheckpointError(f"{self.path}: no tensor {key!r} in state.json's index")
        return file

    def tensor(self, key: str) -> torch.Tensor:
        file = self._file(key)
        path = self.path / file
        heartbeat.progress("load")  # per tensor: a long restore is not a hang
        try:
            handle = self._files.get(file)
            if handle is None:
                handle = self._files[file] = safe_open(str(path), framework="pt")
            tensor = handle.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise _unreadable(path, e, key) from None
        return checked_values(path, key, tensor, self.allow_nonfinite)

    def tensors(self, prefix: str, names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        names = self.keys(prefix) if names is None else names
        return {name: self.tensor(f"{prefix}/{name}") for name in names}

    def describe(self, key: str) -> tuple[list[int], torch.dtype]:
        """Shape and dtype of a stored tensor from its file's checked header: nothing is read."""
        path = self.path / self._file(key)
        entry = checked_header(path).tensors.get(key)
        if entry is None:
            raise CheckpointError(f"{path}: no tensor {key!r}, though state.json's index says so")
        return list(entry.shape), SAFETENSORS_DTYPES[entry.dtype]

    def read_once(self, key: str) -> torch.Tensor:
        """The tensor, with its file mapped only while it is read. `tensor` keeps files mapped
        for the many reads of a restore; a pass over a whole checkpoint (conversion) would keep
        every page it touched resident: 18.5 GB of RSS for Goku-8B's EMA, measured."""
        path = self.path / self._file(key)
        heartbeat.progress("load")
        try:
            with safe_open(str(path), framework="pt") as f:
                tensor = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise _unreadable(path, e, key) from None
        return checked_values(path, key, tensor, self.allow_nonfinite)


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MODEL_FILE).is_file() and (Path(path) / MODEL_CONFIG).is_file()


def model_meta(path: Path) -> dict:
    """config.json of a model directory, read and checked for its fields (not its file)."""
    meta_path = Path(path) / MODEL_CONFIG
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != MODEL_FORMAT:
            raise KeyError(f"format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
        int(meta["bytes"]), entry_checksum(meta)
        meta["config"], meta["weights"]
        if meta["weights"] not in WEIGHT_KINDS:
            raise ValueError(f"weights {meta['weights']!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{meta_path}: not a megagoku model description "
                              f"({type(e).__name__}: {e})") from None
    return meta


def verify_model_dir(path: Path) -> dict:
    """The metadata of a complete, unaltered model directory; else CheckpointError."""
    path = Path(path)
    meta = model_meta(path)
    file = path / MODEL_FILE
    try:
        check_file(file, meta)
    except CheckpointError as e:
        raise CheckpointError(str(e).replace("the manifest", MODEL_CONFIG).replace(
            "manifest says", f"{MODEL_CONFIG} says")) from None
    checked_header(file)
    return meta


class ModelDirReader:
    """A consolidated model directory read like a checkpoint that holds weights only: its one
    kind of weights serves as both `model/` and `ema/`, there is no optimizer state."""

    def __init__(self, path: str | Path, verified: bool = False, allow_nonfinite: bool = False):
        self.path = Path(path)
        self.allow_nonfinite = allow_nonfinite
        self.meta = model_meta(self.path) if verified else verify_model_dir(self.path)
        self.config = self.meta["config"]
        self.state = {"step": self.meta.get("step", 0), "ema_updates": 0}
        self.header = checked_header(self.path / MODEL_FILE)
        try:
            self._file = safe_open(str(self.path / MODEL_FILE), framework="pt")
        except (SafetensorError, OSError) as e:
            raise _unreadable(self.path / MODEL_FILE, e) from None
        self.names = sorted(self.header.tensors)

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
        name = key.partition("/")[2]
        try:
            tensor = self._file.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise _unreadable(self.path / MODEL_FILE, e, name) from None
        return checked_values(self.path / MODEL_FILE, name, tensor, self.allow_nonfinite)

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


def open_weights(path: str | Path, allow_nonfinite: bool = False
                 ) -> "CheckpointReader | ModelDirReader":
    """A reader for a path `find_weights` returned (already verified)."""
    from megagoku.train.official import OfficialFileReader, is_official_file

    if is_official_file(path):
        return OfficialFileReader(path, allow_nonfinite)
    if is_model_dir(path):
        return ModelDirReader(path, verified=True, allow_nonfinite=allow_nonfinite)
    return CheckpointReader(path, verified=True, allow_nonfinite=allow_nonfinite)


def weights_kind(found: str | Path, weights: Optional[str] = None) -> str:
    """Which weights `load_checkpoint(found, weights)` gives: `weights` (ema or model), by
    default a checkpoint's EMA, or the one kind a model directory or official-layout file holds
    (read from its description, nothing verified again). ValueError for a kind it does not
    hold."""
    from megagoku.train.official import is_official_file

    if weights is not None and weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_KINDS)}, got {weights!r}")
    if is_model_dir(found):
        held = json.loads((Path(found) / MODEL_CONFIG).read_text())["weights"]
    elif is_official_file(found):
        with safe_open(str(found), framework="pt") as f:
            held = (f.metadata() or {}).get("weights", "ema")
    else:
        return weights or "ema"
    if weights is not None and weights != held:
        raise ValueError(f"--weights {weights}: {found} holds {held} weights only (convert its "
                         f"checkpoint with --weights {weights}, or drop --weights)")
    return held


def load_checkpoint(path: str | Path, weights: Optional[str] = None,
                    allow_nonfinite: bool = False) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(config dict, whole state dict of the chosen weights, where they came from), for sampling.
    `path` is a checkpoint, a run directory (its newest valid checkpoint), a model directory or
    an official-layout file written by `megagoku convert`; `weights` as `weights_kind` resolves
    it. Every tensor is checked (`checked_values`)."""
    if weights is not None and weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_KINDS)}, got {weights!r}")
    found = find_weights(path)
    kind = weights_kind(found, weights)
    reader = open_weights(found, allow_nonfinite)
    return reader.config, reader.tensors(kind), found
