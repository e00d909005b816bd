"""The latent cache: every manifest record's VAE latent and caption features, encoded once and
stored in sharded safetensors, so training reads tensors instead of decoding and encoding.

Layout of a cache folder:
    cache.json                   settings it was written with, shard count, `complete`
    shard-00000.safetensors      `<position>.latent` (C, T', H', W'), `<position>.text` (L, D)
    shard-00000.json             per record of the shard: position, kind, caption, shapes; or
                                 `skipped` for a file that could not be decoded

Shard s holds records [s * shard_size, (s + 1) * shard_size) of the manifest and is written by
rank s % world; its .json is renamed into place last, so a shard is either complete or absent and
a rerun (`megagoku cache` again, any world size) writes only the missing ones. Records are
encoded at the target size their data settings draw for them (`data.tiers`), so the cache serves
exactly what raw decoding would.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megagoku.config.loader import to_dict
from megagoku.config.schema import DataConfig, TrainingConfig
from megagoku.data.files import ManifestDataset
from megagoku.data.order import SampleOrder
from megagoku.progress import RateMeter, format_duration

log = logging.getLogger(__name__)

INDEX_FILE = "cache.json"
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


def cache_settings(config: TrainingConfig) -> dict:
    """What a cache's contents depend on. Training from a cache checks `latent` and `text`
    against its own config: the model must see the latent space and encoder it samples with."""
    data, latent = config.data, config.latent
    return {
        "manifest": str(Path(data.manifest).resolve()) if data.manifest else None,
        "latent": {"kind": latent.kind, "channels": latent.channels,
                   "path": str(Path(latent.path).resolve()) if latent.path else None},
        "text": {"encoder": config.text.encoder, "max_length": config.text.max_length},
        "data": {"height": data.height, "width": data.width, "frames": data.frames,
                 "fps": data.fps, "seed": data.seed, "tiers": to_dict(data)["tiers"]},
    }


def check_cache_matches(cache: "LatentCache", config: TrainingConfig) -> None:
    """Raise CacheError naming data.cache when the cache was encoded for another latent space
    or text encoder than this config trains with."""
    wanted = cache_settings(config)
    for key in ("latent", "text"):
        if cache.settings.get(key) != wanted[key]:
            raise CacheError(f"data.cache: {cache.folder} holds {key} {cache.settings.get(key)}, "
                             f"but this config uses {wanted[key]}")


def open_cache(folder: Path, settings: dict, records: int, shard_size: int) -> int:
    """Start or continue a cache in `folder` for these settings; returns the shard count. A
    folder written with other settings is refused, naming the first that differs."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = (records + shard_size - 1) // shard_size
    wanted = {"settings": settings, "records": records, "shard_size": shard_size,
              "shards": shards}
    existing = _read_index(folder)
    if existing is not None:
        for key, value in wanted.items():
            if existing.get(key) != value:
                if key == "settings":
                    diff = sorted(k for k in set(value) | set(existing.get(key, {}))
                                  if value.get(k) != existing.get(key, {}).get(k))
                    key = f"settings ({', '.join(diff)})"
                raise CacheError(f"{folder / INDEX_FILE}: the cache was written with other "
                                 f"{key}; use another --out or delete it")
        return shards
    _write_json_atomic(folder / INDEX_FILE, {**wanted, "complete": False})
    return shards


def shard_positions(shard: int, shard_size: int, records: int) -> range:
    """The manifest positions shard `shard` holds."""
    return range(shard * shard_size, min(records, (shard + 1) * shard_size))


def missing_shards(folder: Path, shards: int) -> list[int]:
    return [s for s in range(shards) if not (folder / f"{shard_name(s)}.json").is_file()]


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
    tmp = folder / f"{name}.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / f"{name}.safetensors")
    _write_json_atomic(folder / f"{name}.json", {"shard": shard, "entries": entries})
    return {"written": len(pending), "skipped": len(entries) - len(pending)}


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
    that was skipped when the cache was written."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = _read_index(self.folder)
        if index is None:
            raise CacheError(f"data.cache: {self.folder} has no {INDEX_FILE} (write one with "
                             "megagoku cache)")
        missing = len(missing_shards(self.folder, index["shards"]))
        if missing or not index.get("complete"):
            raise CacheError(f"data.cache: {self.folder} is incomplete ({missing} of "
                             f"{index['shards']} shards missing); run megagoku cache again")
        self.settings = index["settings"]
        self.entries: list[dict] = [{}] * index["records"]
        for s in range(index["shards"]):
            for entry in json.loads((self.folder / f"{shard_name(s)}.json").read_text())["entries"]:
                self.entries[entry["position"]] = {**entry, "shard": s}
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.entries]

    def _shard(self, shard: int):
        handle = self._open.get(shard)
        if handle is None:
            if len(self._open) >= 8:  # a few open shards at a time
                self._open.pop(next(iter(self._open)))
            path = self.folder / f"{shard_name(shard)}.safetensors"
            handle = safe_open(str(path), framework="pt")
            self._open[shard] = handle
        return handle

    def load(self, position: int) -> Optional[CachedSample]:
        entry = self.entries[position]
        if entry.get("skipped"):
            return None
        shard = self._shard(entry["shard"])
        return CachedSample(shard.get_tensor(f"{position}.latent").float(),
                            shard.get_tensor(f"{position}.text").float(),
                            entry["caption"], entry["kind"])


class CachedDataset:
    """The manifest dataset's stream (same `SampleOrder`) served from a latent cache."""

    def __init__(self, cfg: DataConfig):
        self.cache = LatentCache(cfg.cache)
        self.order = SampleOrder(self.cache.kinds, cfg.image_fraction, cfg.seed, str(cfg.cache))

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> Optional[CachedSample]:
        return self.cache.load(self.order.position(index))
