"""`megagoku demo --config configs/demo_latent.yaml`: the Goku path end to end, in a VAE's latent
space, on built-in data.

Stages, each in its own folder of the run dir and each skipped when a previous run finished it
(run the command again after an interruption and it goes on where it stopped):

1. `vae/`: `megagoku train-vae` with the config named by `demo.vae`; done when its final
   figures (`reconstruction.json`) are written, which is the last thing it does.
2. `shapes/`: `demo.samples` built-in samples written as video and image files with a manifest
   (`megagoku data shapes`); written in a temporary folder renamed into place.
3. `cache/`: `megagoku cache`: every record's latent and caption features (it writes only the
   shards that are missing).
4. `model/`: `megagoku train` from the cache, resumed from its newest checkpoint when there is
   one (a finished run resumes to its end and trains nothing).
5. `samples/`: the held-out and seen prompts sampled, decoded by the VAE, and checked from their
   pixels, as `megagoku demo` does in pixel space (always redone: it is the check).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from megagoku.config import ConfigError, TrainingConfig, load_vae_training_config
from megagoku.config.loader import find_config_file

log = logging.getLogger(__name__)

STAGES = ("vae", "shapes", "cache", "model", "samples")


def stage_paths(run_dir: Path) -> dict[str, Path]:
    return {name: run_dir / name for name in STAGES}


def run_latent(args: argparse.Namespace, config: TrainingConfig) -> int:
    from megagoku.tools.demo import plot_loss, report_samples, stopped_early

    if not config.demo.vae:
        raise ConfigError(f"{args.config}: demo.vae: the latent demo trains its VAE first: name "
                          "a train-vae config (e.g. vae/shapes64.yaml)")
    try:
        vae_source = find_config_file(config.demo.vae, Path(args.config).parent)
    except FileNotFoundError:
        raise ConfigError(f"{args.config}: demo.vae: no such train-vae config "
                          f"{config.demo.vae!r}") from None
    vae_config = load_vae_training_config(vae_source)
    if (vae_config.data.frames, vae_config.data.height, vae_config.data.width) != \
            (config.data.frames, config.data.height, config.data.width):
        log.info("the VAE trains on %dx%dx%d clips, the Transformer on %dx%dx%d",
                 vae_config.data.frames, vae_config.data.height, vae_config.data.width,
                 config.data.frames, config.data.height, config.data.width)
    run_dir = Path(args.run_dir)
    paths = stage_paths(run_dir)
    vae_path = paths["vae"] / "vae"
    manifest = paths["shapes"] / "manifest.jsonl"
    # The Transformer trains from the cache, in the latent space of the VAE trained here.
    config = replace(config,
                     latent=replace(config.latent, path=str(vae_path)),
                     data=replace(config.data, kind="cache", cache=str(paths["cache"]),
                                  manifest=str(manifest)))
    check_vae_matches(config, vae_config, vae_source)
    run_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    figures = train_vae_stage(vae_config, vae_source, paths["vae"])
    seconds["vae"] = time.perf_counter() - started

    started = time.perf_counter()
    write_shapes_stage(config, paths["shapes"])
    seconds["shapes"] = time.perf_counter() - started

    started = time.perf_counter()
    cache_stage(args.config, args.overrides, vae_path, manifest, paths["cache"])
    seconds["cache"] = time.perf_counter() - started

    started = time.perf_counter()
    from megagoku.train.trainer import train

    result = train(config, paths["model"], source=args.config, resume="auto")
    seconds["model"] = time.perf_counter() - started
    stopped = stopped_early(result, config.train.steps, "to go on from the newest checkpoint")
    if stopped is not None:
        return stopped

    started = time.perf_counter()
    report = report_samples(config, result.checkpoint, paths["samples"], args.seeds)
    seconds["samples"] = time.perf_counter() - started

    curve = plot_loss(paths["model"] / "metrics.jsonl", run_dir / "loss.png")
    summary = {"vae": figures, "seconds": seconds, "samples": {
        split: report[split]["summary"] for split in report}}
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(f"VAE ({paths['vae']}): reconstruction of {figures['summary']}")
    print(f"             original (above) vs reconstruction: {figures['picture']}")
    print(f"Transformer ({paths['model']}): {result.steps} steps in the VAE's latent space; "
          f"final loss {result.final_loss:.4f}")
    for split in report:
        s = report[split]["summary"]
        print(f"{split:>8} prompts: colour right {s['colour_ok']:.0%}, "
              f"direction right {s['direction_ok']:.0%} "
              f"({len(report[split]['samples'])} videos decoded by the VAE, checked from pixels)")
    print("minutes:     " + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items()) +
          f"; all {sum(seconds.values()) / 60:.1f} (this run; finished stages are skipped)")
    print(f"samples:     {paths['samples']}/held_out/*.gif, {paths['samples']}/seen/*.gif")
    print(f"overview:    {paths['samples'] / 'overview.png'}  (rows: held-out prompts, then "
          "seen; frames left to right)")
    print(f"loss curve:  {curve}")
    return 0


def check_vae_matches(config: TrainingConfig, vae_config, vae_source: Path) -> None:
    """Before any work: the Transformer's latent channels and sizes are the VAE's."""
    if config.latent.channels != vae_config.vae.latent_channels:
        raise ConfigError(f"latent.channels: {config.latent.channels} differs from the "
                          f"{vae_config.vae.latent_channels} latent channels of {vae_source}")


def train_vae_stage(vae_config, vae_source: Path, folder: Path) -> dict:
    """The VAE, or the figures of the one a previous run finished."""
    from megagoku.train.vae_trainer import FIGURES, train_vae

    figures_file = folder / FIGURES
    if figures_file.is_file():
        log.info("VAE: %s is finished, skipped", folder)
    else:
        train_vae(vae_config, folder, source=str(vae_source), overwrite=True)
    figures = json.loads(figures_file.read_text())
    from megagoku.train.vae_eval import ReconstructionFigures

    fields = {k: figures[k] for k in ("clips", "fg_mse", "background_fg_mse", "psnr",
                                      "agreement", "picture")}
    return {**figures, "summary": ReconstructionFigures(**fields).summary()}


def write_shapes_stage(config: TrainingConfig, folder: Path) -> Path:
    """`demo.samples` built-in samples as files; the manifest is written last, in a temporary
    folder renamed into place, so an existing folder is complete."""
    from megagoku.data.shapes_files import write_shapes_files

    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        log.info("shapes: %s is written, skipped", folder)
        return manifest
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    log.info("shapes: writing %d samples to %s", config.demo.samples, folder)
    write_shapes_files(temporary, config.data, config.demo.samples)  # paths relative to it
    shutil.rmtree(folder, ignore_errors=True)
    temporary.rename(folder)
    return manifest


def cache_stage(config_path: str, overrides: list[str], vae_path: Path, manifest: Path,
                folder: Path) -> None:
    """`megagoku cache` of the manifest in the VAE's latent space (it skips written shards)."""
    from megagoku.tools import cache

    index = folder / "cache.json"
    if index.is_file() and json.loads(index.read_text()).get("complete"):
        log.info("cache: %s is complete, skipped", folder)
        return
    # The arguments as `megagoku cache` parses them, so its defaults stay its own.
    parser = argparse.ArgumentParser(prog="megagoku")
    cache.register(parser.add_subparsers())
    sets = [item for o in [*overrides, f"latent.path={vae_path}"] for item in ("--set", o)]
    status = cache.run(parser.parse_args([
        "cache", "--config", config_path, "--manifest", str(manifest), "--out", str(folder),
        "--shard-size", "256", "--dtype", "float32", *sets]))
    if status:
        raise RuntimeError(f"megagoku cache of {manifest} into {folder} failed")
