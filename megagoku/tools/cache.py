"""`megagoku cache --config FILE [--manifest M] --out DIR [--shard-size N] [--dtype D]`.

Pre-encodes a manifest's records with the config's latent space and text encoder into a latent
cache (megagoku/data/cache.py); `data.kind: cache, data.cache: DIR` trains from it. Resumable:
run it again and only missing shards are written. Under torchrun (or srun, mpirun, deepspeed)
every rank writes its own shards (shard s -> rank s % world) and rank 0 marks the cache complete.
"""

from __future__ import annotations

import argparse
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
    """This rank's shards, then (rank 0) the index; collective."""
    from megagoku.data.cache import (DTYPES, CacheError, CacheProgress, cache_settings,
                                     finish_cache, missing_shards, open_cache, shard_positions,
                                     write_shard)
    from megagoku.models import TextEncoder, build_latent_space
    from megagoku.parallel import collectives

    rank, world = collectives.rank(), collectives.world_size()
    out = Path(args.out)
    try:  # rank 0 starts the folder; then every rank checks it was written with these settings
        if rank == 0:
            open_cache(out, cache_settings(config), len(dataset), args.shard_size)
        collectives.barrier()
        shards = open_cache(out, cache_settings(config), len(dataset), args.shard_size)
    except CacheError as e:
        raise ConfigError(str(e)) from None

    missing = missing_shards(out, shards)
    mine = [s for s in missing if s % world == rank]
    done = shards - len(missing)
    log.info("cache %s: %d records in %d shards, %d already written; rank %d of %d writes %d",
             out, len(dataset), shards, done, rank, world, len(mine))
    if mine:
        latent_space = build_latent_space(config.latent, device)
        text = TextEncoder(config.text.encoder, config.text.max_length, device)

        def encode_text(captions: list[str]):
            feats, cu = text.encode(captions)
            return list(feats.split((cu[1:] - cu[:-1]).tolist()))

        ranges = {s: shard_positions(s, args.shard_size, len(dataset)) for s in mine}
        progress = CacheProgress(total=sum(len(r) for r in ranges.values()))
        for shard, positions in ranges.items():
            write_shard(out, shard, positions, dataset, latent_space.encode, encode_text,
                        DTYPES[args.dtype])
            progress.add(len(positions), force=shard == mine[-1])
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
