"""The latent cache: every manifest record's VAE latent and caption features, encoded once and
stored in sharded safetensors, so training reads tensors instead of decoding and encoding.

Layout of a cache folder:
    cache.json                   its key (format version, every setting that changes a latent or
                                 a caption feature, the encoders' weights by content, the storage
                                 dtype, record and shard counts), `complete`
    shard-00000.safetensors      `<position>.latent` (C, T', H', W'), `<position>.text` (L, D);
                                 its header holds every tensor's xxh3-128
    shard-00000.json             the checksum of the manifest records it was encoded from, and
                                 per record: position, kind, caption, shapes; or `skipped` for a
                                 file that could not be decoded
    empty-caption.safetensors    `text`: the empty caption's features (a caption dropped for
                                 classifier-free guidance), so that training from the cache never
                                 loads the text encoder; a cache without it (older, or the file
                                 damaged) makes the trainer encode "" itself
    .lock                        held by the `megagoku cache` writing the folder (one at a time)

Shard s holds records [s * shard_size, (s + 1) * shard_size) of the manifest and is written by
rank s % world; its .json is renamed into place last, so a shard is either complete or absent.
A rerun (`megagoku cache` again, any world size) writes the shards that are missing, whose
manifest records changed since (an edited caption is never served from an old shard), or whose
file is not whole (header and size); a folder whose key differs is refused in one line (or
rebuilt with --overwrite), so settings and dtypes never mix. Records are encoded at the target
size their data settings draw for them (`data.tiers`), so the cache serves exactly what raw
decoding would. Reading checks each shard's header and size when it is opened and each tensor
against its checksum: a bad shard or record is skipped and counted like an undecodable video,
with one warning line, and `megagoku cache` rebuilds it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import xxhash
from safetensors import SafetensorError, safe_open

from megagoku.config.loader import to_dict
from megagoku.config.schema import DataConfig, TrainingConfig
from megagoku.data.files import ManifestDataset
from megagoku.data.order import SampleOrder
from megagoku.progress import RateMeter, format_duration
from megagoku.storage import (TensorFileError, check_tensor, content_fingerprint, read_header,
                              write_tensors)

log = logging.getLogger(__name__)

INDEX_FILE = "cache.json"
EMPTY_CAPTION_FILE = "empty-caption.safetensors"
LOCK_FILE = ".lock"
VERSION = 2  # 1: keyed by the manifest's path only, no checksums
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheError(ValueError):
    """A cache folder that cannot serve: the message names the folder and what is wrong."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _read_index(folder: Path) -> Optional[dict]:
    path = folder / INDEX_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: not valid JSON ({e})") from None


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str) -> str:
    return content_fingerprint(Path(path))


def cache_settings(config: TrainingConfig, text_encoder_dir: Optional[Path] = None) -> dict:
    """Everything a cache's contents depend on but its records: the latent space (settings and
    its weights by content), the text encoder (name, length, its weights by content: the folder
    `text_encoder_dir` its name resolves to) and every data setting that changes a latent.
    Training from a cache checks `latent` and `text` against its own config: the model must see
    the latent space and encoder it samples with."""
    data, latent = config.data, config.latent
    path = Path(latent.path).resolve() if latent.path else None
    return {
        "latent": {**to_dict(latent), "path": str(path) if path else None,
                   "weights": _fingerprint(str(path)) if path and path.exists() else None},
        "text": {"encoder": config.text.encoder, "max_length": config.text.max_length,
                 "weights": _fingerprint(str(text_encoder_dir)) if text_encoder_dir else None},
        "data": {"height": data.height, "width": data.width, "frames": data.frames,
                 "fps": data.fps, "seed": data.seed, "tiers": to_dict(data)["tiers"],
                 "decode_backend": data.decode_backend},
    }


def check_cache_matches(cache: "LatentCache", config: TrainingConfig,
                        text_encoder_dir: Optional[Path] = None) -> None:
    """Raise CacheError naming data.cache when the cache was encoded for another latent space
    or text encoder than this config trains with."""
    wanted = cache_settings(config, text_encoder_dir)
    for key in ("latent", "text"):
        if cache.settings.get(key) != wanted[key]:
            raise CacheError(f"data.cache: {cache.folder} holds {key} {cache.settings.get(key)}, "
                             f"but this config uses {wanted[key]}")


def records_checksum(dataset: ManifestDataset, positions: Sequence[int]) -> str:
    """xxh3-128 of the manifest rows at `positions` (paths relative to the manifest's folder, so
    that moving the folder changes nothing): what a shard was encoded from."""
    base = Path(dataset.cfg.manifest).resolve().parent
    rows = [dataset.records[p].to_row(base) for p in positions]
    return xxhash.xxh3_128(json.dumps(rows, sort_keys=True).encode()).hexdigest()


class CacheLock:
    """One writer per cache folder: an exclusive lock on `<folder>/.lock` (flock; on NFS the
    kernel maps it to a POSIX lock), held while `megagoku cache` runs; the file says who holds
    it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise CacheError(f"{self.path.parent}: another megagoku cache is writing this "
                             f"folder ({holder}); wait for it, or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def clear_cache(folder: Path) -> None:
    """What `--overwrite` removes: the cache's own files, nothing else in the folder."""
    for path in list(folder.glob("shard-*")) + [folder / INDEX_FILE, folder / f"{INDEX_FILE}.tmp",
                                                 folder / EMPTY_CAPTION_FILE]:
        path.unlink(missing_ok=True)


def open_cache(folder: Path, settings: dict, records: int, shard_size: int,
               dtype: str = "bfloat16", manifest: Optional[str] = None) -> int:
    """Start or continue a cache in `folder` for this key; returns the shard count. A folder
    written with another key is refused, naming the first part that differs. The manifest's
    path is not part of the key (each shard records what its records were, wherever the
    manifest lives): another one is said, and shards whose records differ are rebuilt."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = (records + shard_size - 1) // shard_size
    wanted = {"settings": settings, "dtype": dtype, "records": records,
              "shard_size": shard_size, "shards": shards}
    existing = _read_index(folder)
    if existing is not None:
        if existing.get("version") != VERSION:
            raise CacheError(f"{folder / INDEX_FILE}: written by an older megagoku (format "
                             f"{existing.get('version', 1)}, no content key); rebuild it with "
                             "megagoku cache --overwrite")
        for key, value in wanted.items():
            if existing.get(key) != value:
                if key == "settings":
                    diff = sorted(k for k in set(value) | set(existing.get(key, {}))
                                  if value.get(k) != existing.get(key, {}).get(k))
                    key = f"settings ({', '.join(diff)})"
                elif key == "dtype":
                    key = f"dtype ({existing.get('dtype')}, not {dtype})"
                raise CacheError(f"{folder / INDEX_FILE}: the cache was written with other "
                                 f"{key}; use another --out, or --overwrite to rebuild it")
        if manifest is not None and existing.get("manifest") != manifest:
            log.warning("cache %s: written from manifest %s, continued from %s: shards whose "
                        "records differ are rebuilt", folder, existing.get("manifest"), manifest)
            _write_json_atomic(folder / INDEX_FILE, {**existing, "manifest": manifest})
        return shards
    _write_json_atomic(folder / INDEX_FILE, {"version": VERSION, **wanted, "manifest": manifest,
                                             "complete": False})
    return shards


def mark_incomplete(folder: Path) -> None:
    """Before any shard is rewritten: a trainer must not read a cache in the middle of it."""
    index = _read_index(folder)
    if index is not None and index.get("complete"):
        index["complete"] = False
        _write_json_atomic(folder / INDEX_FILE, index)


def shard_positions(shard: int, shard_size: int, records: int) -> range:
    """The manifest positions shard `shard` holds."""
    return range(shard * shard_size, min(records, (shard + 1) * shard_size))


def missing_shards(folder: Path, shards: int) -> list[int]:
    return [s for s in range(shards) if not (folder / f"{shard_name(s)}.json").is_file()]


def shard_problem(folder: Path, shard: int, records: str) -> Optional[str]:
    """Why shard `shard` must be (re)written, or None when it is there, whole (header and size)
    and encoded from the manifest records whose checksum is `records`."""
    name = shard_name(shard)
    try:
        meta = json.loads((folder / f"{name}.json").read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as e:
        return f"{name}.json unreadable ({type(e).__name__})"
    if not isinstance(meta, dict) or meta.get("records") != records:
        return "its manifest records changed"
    try:
        read_header(folder / f"{name}.safetensors")
    except TensorFileError as e:
        return str(e)
    return None


class CacheProgress:
    """A periodic line with rate and ETA (`every` seconds)."""

    def __init__(self, total: int, every: float = 10.0):
        self.total, self.every, self.done = total, every, 0
        self.meter, self.last = RateMeter(total), 0.0

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = self.meter.elapsed()
        if force or now - self.last >= self.every:
            self.last = now
            rate, eta = self.meter.measure(self.done)
            log.info("cache: %d/%d records, %.1f records/s, ETA %s", self.done, self.total,
                     rate, format_duration(eta))


def write_shard(folder: Path, shard: int, positions: Sequence[int], dataset: ManifestDataset,
                encode_latent: Callable[[torch.Tensor], torch.Tensor],
                encode_text: Callable[[list[str]], list[torch.Tensor]], dtype: torch.dtype) -> dict:
    """Encode the manifest records at `positions` into shard `shard`; a record whose file cannot
    be decoded is listed as skipped (the reader warned and counted it)."""
    tensors, entries, pending = {}, [], []
    for position in positions:
        sample = dataset.load(position)
        if sample is None:
            entries.append({"position": position, "kind": dataset.records[position].kind,
                            "skipped": True})
            continue
        latent = encode_latent(sample.pixels)
        tensors[f"{position}.latent"] = latent.to("cpu", dtype).contiguous()
        entries.append({"position": position, "kind": sample.kind, "caption": sample.caption,
                        "latent_shape": list(latent.shape)})
        pending.append((position, sample.caption))
    if pending:  # one batch through the text encoder per shard
        for (position, _), feats in zip(pending, encode_text([c for _, c in pending])):
            tensors[f"{position}.text"] = feats.to("cpu", dtype).contiguous()
    name = shard_name(shard)
    write_tensors(folder / f"{name}.safetensors", tensors, tensor_checksums=True)
    _write_json_atomic(folder / f"{name}.json",
                       {"shard": shard, "records": records_checksum(dataset, positions),
                        "entries": entries})
    return {"written": len(pending), "skipped": len(entries) - len(pending)}


def write_empty_caption(folder: Path, encode_text: Callable[[list[str]], list[torch.Tensor]],
                        dtype: torch.dtype) -> bool:
    """Write the empty caption's features unless the folder holds them whole; True if written.
    (The folder's key names the text encoder: a cache of another encoder is refused or rebuilt,
    `clear_cache` removing this file with the shards.)"""
    try:
        read_empty_caption(folder)
        return False
    except (TensorFileError, SafetensorError, OSError):  # missing, not whole or altered
        pass
    features = encode_text([""])[0]
    write_tensors(folder / EMPTY_CAPTION_FILE, {"text": features.to("cpu", dtype).contiguous()},
                  tensor_checksums=True)
    return True


def read_empty_caption(folder: Path) -> torch.Tensor:
    """The empty caption's features as stored, checked against their checksum; TensorFileError
    (or SafetensorError, OSError) otherwise."""
    path = folder / EMPTY_CAPTION_FILE
    header = read_header(path)
    with safe_open(str(path), framework="pt") as f:
        text = f.get_tensor("text")
    check_tensor(header, "text", text)
    return text


def finish_cache(folder: Path) -> dict:
    """Mark the cache complete once every shard is there (rank 0, after the others finished)."""
    index = _read_index(folder)
    if index is None:
        raise CacheError(f"{folder}: no {INDEX_FILE}: not a cache folder")
    missing = missing_shards(folder, index["shards"])
    if missing:
        raise CacheError(f"{folder}: {len(missing)} of {index['shards']} shards missing "
                         f"(first: {shard_name(missing[0])}); run megagoku cache again")
    samples = skipped = 0
    for s in range(index["shards"]):
        entries = json.loads((folder / f"{shard_name(s)}.json").read_text())["entries"]
        skipped += sum(1 for e in entries if e.get("skipped"))
        samples += sum(1 for e in entries if not e.get("skipped"))
    index.update(complete=True, samples=samples, skipped=skipped)
    _write_json_atomic(folder / INDEX_FILE, index)
    return index


@dataclass
class CachedSample:
    latent: torch.Tensor  # (C, T', H', W') float32, normalised as the latent space gives it
    text: torch.Tensor  # (L, D) float32 token features of the caption
    caption: str
    kind: str


class LatentCache:
    """Random access to a complete cache: `load(position)` -> CachedSample, or None for a record
    that was skipped when the cache was written, or whose shard or tensors fail their checks now
    (one warning per shard; counted by the loader like an undecodable file)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = _read_index(self.folder)
        if index is None:
            raise CacheError(f"data.cache: {self.folder} has no {INDEX_FILE} (write one with "
                             "megagoku cache)")
        if index.get("version") != VERSION:
            raise CacheError(f"data.cache: {self.folder} was written by an older megagoku "
                             f"(format {index.get('version', 1)}, no checksums); rebuild it with "
                             "megagoku cache --overwrite")
        missing = len(missing_shards(self.folder, index["shards"]))
        if missing or not index.get("complete"):
            raise CacheError(f"data.cache: {self.folder} is incomplete ({missing} of "
                             f"{index['shards']} shards missing); run megagoku cache again")
        self.settings = index["settings"]
        self.entries: list[dict] = [{}] * index["records"]
        for s in range(index["shards"]):
            for entry in json.loads((self.folder / f"{shard_name(s)}.json").read_text())["entries"]:
                self.entries[entry["position"]] = {**entry, "shard": s}
        self._open: dict[int, tuple] = {}
        self.bad_shards: dict[int, str] = {}  # shard -> why, in this process
        self.bad_records = 0  # records refused for a failed checksum, in this process

    def __len__(self) -> int:
        return len(self.entries)

    def empty_caption(self) -> Optional[torch.Tensor]:
        """The empty caption's features (float32), or None where the cache has none whole (one
        written before they were cached, or the file damaged: warned), for the trainer to encode
        it instead."""
        if not (self.folder / EMPTY_CAPTION_FILE).exists():
            return None
        try:
            text = read_empty_caption(self.folder)
        except (TensorFileError, SafetensorError, OSError) as e:
            log.warning("cache: %s; the empty caption is encoded instead (megagoku cache "
                        "rewrites the file)", " ".join(str(e).split()))
            return None
        return text.float()

    def __getstate__(self) -> dict:  # a data worker opens its own shard files
        return {**self.__dict__, "_open": {}}

    @property
    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.entries]

    def _shard(self, shard: int) -> Optional[tuple]:
        """(header, handle) of a shard that passed its checks when opened; None for a bad one."""
        if shard in self.bad_shards:
            return None
        opened = self._open.get(shard)
        if opened is None:
            if len(self._open) >= 8:  # a few open shards at a time
                self._open.pop(next(iter(self._open)))
            path = self.folder / f"{shard_name(shard)}.safetensors"
            try:
                header = read_header(path)
                opened = (header, safe_open(str(path), framework="pt"))
            except (TensorFileError, SafetensorError, OSError) as e:
                self._refuse(shard, str(e) if isinstance(e, TensorFileError) else
                             f"{path}: cannot open ({' '.join(str(e).split())})")
                return None
            self._open[shard] = opened
        return opened

    def _refuse(self, shard: int, why: str) -> None:
        records = sum(1 for e in self.entries if e.get("shard") == shard and not e.get("skipped"))
        self.bad_shards[shard] = why
        log.warning("cache: %s; its %d records are skipped (megagoku cache rebuilds the shard)",
                    why, records)

    def _tensor(self, opened: tuple, name: str) -> torch.Tensor:
        header, handle = opened
        tensor = handle.get_tensor(name)
        check_tensor(header, name, tensor)
        return tensor

    def load(self, position: int) -> Optional[CachedSample]:
        entry = self.entries[position]
        if entry.get("skipped"):
            return None
        opened = self._shard(entry["shard"])
        if opened is None:
            return None
        try:
            latent = self._tensor(opened, f"{position}.latent")
            text = self._tensor(opened, f"{position}.text")
        except (TensorFileError, SafetensorError) as e:
            self.bad_records += 1
            log.warning("cache: record %d skipped: %s", position, " ".join(str(e).split()))
            return None
        return CachedSample(latent.float(), text.float(), entry["caption"], entry["kind"])


class CachedDataset:
    """The manifest dataset's stream (same `SampleOrder`) served from a latent cache."""

    def __init__(self, cfg: DataConfig):
        self.cache = LatentCache(cfg.cache)
        self.order = SampleOrder(self.cache.kinds, cfg.image_fraction, cfg.seed, str(cfg.cache))

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> Optional[CachedSample]:
        return self.cache.load(self.order.position(index))

    def empty_caption(self) -> Optional[torch.Tensor]:
        return self.cache.empty_caption()
