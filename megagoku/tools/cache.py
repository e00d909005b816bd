"""`megagoku cache --config FILE [--manifest M] --out DIR [--shard-size N] [--dtype D]
[--overwrite]`.

Pre-encodes a manifest's records with the config's latent space and text encoder into a latent
cache (megagoku/data/cache.py); `data.kind: cache, data.cache: DIR` trains from it. Resumable:
run it again and only the shards that are missing, not whole, or encoded from manifest records
that have changed since are written. A folder written with other settings, encoders or dtype is
refused in one line; `--overwrite` rebuilds it. One `megagoku cache` per folder at a time (a
lock). Under torchrun (or srun, mpirun, deepspeed) every rank writes its own shards (shard s ->
rank s % world) and rank 0 marks the cache complete.
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from megagoku.config import ConfigError, load_training_config

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="pre-encode a manifest's latents and caption "
                              "features into sharded safetensors", description=__doc__)
    p.add_argument("--config", required=True,
                   help="training config whose data, latent and text sections to use")
    p.add_argument("--manifest", help="manifest to encode (default: the config's data.manifest)")
    p.add_argument("--out", required=True, help="cache folder (created, or continued)")
    p.add_argument("--shard-size", type=int, default=256, help="records per shard (default 256)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="storage dtype of latents and features (default bfloat16)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild a cache folder written with other settings, encoders or dtype")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ["data.kind=manifest"]
    if args.manifest:
        overrides.append(f"data.manifest={args.manifest}")
    config = load_training_config(args.config, overrides)
    if args.shard_size < 1:
        raise ConfigError(f"--shard-size: must be at least 1, got {args.shard_size}")

    from megagoku.data.files import ManifestDataset
    from megagoku.data.manifest import ManifestError
    from megagoku.parallel import resolve_device
    from megagoku.parallel.distributed import init_distributed, shutdown

    device = resolve_device(config.train.device)
    try:
        dataset = ManifestDataset(config.data, device.type)
    except (ManifestError, ValueError) as e:
        raise ConfigError(f"{args.config}: data.manifest: {e}") from None
    init_distributed(config.parallel.backend)
    failed = True
    try:
        status = write_cache(args, config, dataset, device)
        failed = False
        return status
    finally:  # without the barrier after a failure: the other ranks may be gone
        shutdown(barrier=not failed)


def write_cache(args: argparse.Namespace, config, dataset, device) -> int:
    """This rank's shards, then (rank 0) the index; collective. Rank 0 holds the folder's lock
    throughout."""
    from megagoku.data.cache import CacheError, CacheLock
    from megagoku.parallel import collectives

    lock = CacheLock(Path(args.out))
    try:
        if collectives.rank() == 0:
            lock.acquire()
        return _write_cache(args, config, dataset, device)
    except CacheError as e:
        raise ConfigError(str(e)) from None
    finally:
        lock.release()


def _write_cache(args: argparse.Namespace, config, dataset, device) -> int:
    import torch

    from megagoku.data.cache import (DTYPES, CacheError, CacheProgress, cache_settings,
                                     clear_cache, finish_cache, mark_incomplete, open_cache,
                                     records_checksum, shard_positions, shard_problem,
                                     write_empty_caption, write_shard)
    from megagoku.models import TextEncoder, build_latent_space
    from megagoku.models.text_encoder import resolve_encoder_path
    from megagoku.parallel import collectives

    rank, world = collectives.rank(), collectives.world_size()
    out = Path(args.out)

    def start() -> int:
        settings = cache_settings(config, resolve_encoder_path(config.text.encoder))
        if args.overwrite:
            clear_cache(out)
        return open_cache(out, settings, len(dataset), args.shard_size, args.dtype,
                          str(Path(config.data.manifest).resolve()))

    # Rank 0 keys the folder (refused: the same line on every rank); then each rank checks its
    # own shards: missing, not whole, or encoded from records that changed since.
    shards = collectives.rank0_decides(start, (CacheError, ConfigError))
    ranges = {s: shard_positions(s, args.shard_size, len(dataset))
              for s in range(rank, shards, world)}
    mine, problems = [], {}
    for s, positions in ranges.items():
        problem = shard_problem(out, s, records_checksum(dataset, positions))
        if problem is not None:
            mine.append(s)
            known = problem in ("missing", "its manifest records changed")
            why = problem if known else "not whole"
            problems[why] = problems.get(why, 0) + 1
            if not known:
                log.warning("cache: rewriting shard %d: %s", s, problem)
    todo = int(collectives.sum_over(torch.tensor(len(mine))).item())  # every rank: the same
    if todo and rank == 0:
        mark_incomplete(out)
    collectives.barrier()
    log.info("cache %s: %d records in %d shards, %d already written; rank %d of %d writes %d%s",
             out, len(dataset), shards, shards - todo, rank, world, len(mine),
             f" ({', '.join(f'{n} {why}' for why, n in problems.items())})" if problems else "")

    @functools.cache
    def text_encoder() -> TextEncoder:  # loaded by a rank with something to encode
        return TextEncoder(config.text.encoder, config.text.max_length, device)

    def encode_text(captions: list[str]):
        feats, cu = text_encoder().encode(captions)
        return list(feats.split((cu[1:] - cu[:-1]).tolist()))

    if mine:
        latent_space = build_latent_space(config.latent, device)
        progress = CacheProgress(total=sum(len(ranges[s]) for s in mine))
        for shard in mine:
            write_shard(out, shard, ranges[shard], dataset, latent_space.encode, encode_text,
                        DTYPES[args.dtype])
            progress.add(len(ranges[shard]), force=shard == mine[-1])
    if rank == 0 and write_empty_caption(out, encode_text, DTYPES[args.dtype]):
        log.info("cache %s: wrote the empty caption's features", out)
    collectives.barrier()
    status = 0
    if rank == 0:
        try:
            index = finish_cache(out)
            print(f"cache {out}: {index['samples']} samples, {index['skipped']} skipped "
                  f"(undecodable), {index['shards']} shards")
        except CacheError as e:
            log.error("%s", e)
            status = 1
    return status
