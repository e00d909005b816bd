"""`megagoku stand-ins`: the inputs of a full-width run without a 3B-parameter text encoder or
a trained VAE. A test and benchmark fixture, not a model: its latents and caption features have
the shapes and statistics of real ones and mean nothing.

For a training config that trains from a cache (`data.kind: cache`, `latent.kind: causal_vae`),
writes, at the paths the config names:
- `text.encoder`: a seeded random T5 encoder of the config's `model.text_dim` (one layer, 2048
  wide for Goku), with a word-level tokenizer over the built-in shapes captions;
- `latent.path`: a seeded random 3D causal VAE with `model.in_channels` latent channels (8x8
  spatial, 4x temporal, as Goku's), normalised per channel with the statistics of its own latents;
- `<data.cache>.media`: `--records` built-in shapes samples as files (clips and images) and their
  manifest, at `data.height` x `data.width` x `data.frames`;
- `data.cache`: those files encoded by the real `megagoku cache` path (decode, VAE, encoder).
Each folder gets a `stand-in.json` naming what it is; a rerun reuses the stand-ins of the same
settings, and a folder that holds anything else (a real encoder, VAE or cache) is refused.
A full-width run then reads latents of 16 channels and caption features 2048 wide through the
same loader, packer and model as a cluster run (configs/full_width_cpu.yaml).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megagoku.config import ConfigError, load_training_config

TOKENS = ["<pad>", "</s>", "<unk>"]  # T5's pad and end ids (0, 1) first
MARKER = "stand-in.json"  # in every folder stand-ins write: what it is and its settings


def register(subparsers) -> None:
    p = subparsers.add_parser("stand-ins", help="seeded random text encoder, VAE and latent "
                              "cache at a config's widths (a full-width fixture)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config that trains from a cache")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--records", type=int, default=32, help="samples in the cache (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def write_text_encoder(folder: Path, width: int, seed: int) -> Path:
    """A one-layer T5 encoder of `width`, seeded, with a word-level tokenizer over the shapes
    captions' words (anything else is <unk>)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from megagoku.data.shapes import all_video_captions

    words = sorted({w for caption in all_video_captions() for w in caption.split()})
    vocab = {t: i for i, t in enumerate(TOKENS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=width, d_kv=64, num_heads=4, d_ff=256,
                      num_layers=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(folder, safe_serialization=True)
    # The encoder-only model saves its config as not encoder-decoder; a T5 checkpoint's says it
    # is (that is how TextEncoder tells a T5 from an encoder-only model).
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, "is_encoder_decoder": True},
                                                   indent=2) + "\n")
    fast.save_pretrained(folder)
    return folder


def write_vae(folder: Path, channels: int, seed: int, probe) -> Path:
    """A seeded random causal VAE of `channels` latent channels, saved as `megagoku train-vae`
    saves one, with the per-channel mean and std of its latents of the `probe` pixels."""
    import torch

    from megagoku.config.schema import VAEConfig
    from megagoku.models.vae import CausalVAE

    torch.manual_seed(seed)
    vae = CausalVAE(VAEConfig(latent_channels=channels, base_channels=8,
                              channel_multipliers=(1, 1, 2, 2), blocks_per_level=1,
                              mid_attention=False)).eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(p[None])[0][0].flatten(1) for p in probe], dim=1)
    mean, std = latents.mean(1), latents.std(1).clamp_min(1e-6)
    return vae.save(folder, mean.tolist(), std.tolist())


def _claim(folder: Path, field: str, source: str, settings: dict) -> bool:
    """Whether `folder` still has to be written: False when it holds the stand-in of these
    `settings` already (its MARKER says so). A folder that holds anything else is refused, in one
    line naming the field: stand-ins never write over a real encoder, VAE or cache."""
    marker = folder / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != settings:
            raise ConfigError(f"{source}: {field}: {folder} holds the stand-in of {found}, not "
                              f"of {settings}; remove it or name another folder")
        return False
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{source}: {field}: {folder} is not empty and not a stand-in (no "
                          f"{MARKER}); stand-ins write only into new folders")
    return True


def _mark(folder: Path, settings: dict) -> None:
    (folder / MARKER).write_text(json.dumps(settings, indent=1) + "\n")


def run(args: argparse.Namespace) -> int:
    from megagoku.data.shapes import ShapesDataset
    from megagoku.data.shapes_files import write_shapes_files
    from megagoku.models.text_encoder import BUILTIN_ENCODERS
    from megagoku.tools import cache as cache_tool

    config = load_training_config(args.config, args.overrides)
    source = args.config
    if config.data.kind != "cache" or config.latent.kind != "causal_vae":
        raise ConfigError(f"{source}: stand-ins need data.kind: cache and latent.kind: "
                          f"causal_vae, got {config.data.kind} and {config.latent.kind}")
    if config.text.encoder in BUILTIN_ENCODERS:
        raise ConfigError(f"{source}: text.encoder: stand-ins write a folder, got the built-in "
                          f"encoder {config.text.encoder}")
    if args.records < 1:
        raise ConfigError(f"--records: must be at least 1, got {args.records}")
    encoder, vae_dir = Path(config.text.encoder), Path(config.latent.path)
    cache = Path(config.data.cache)
    media = cache.with_name(cache.name + ".media")
    data = config.data
    what = {  # folder -> (field, the settings its stand-in is written with)
        encoder: ("text.encoder", {"stand_in": "text encoder", "seed": args.seed,
                                   "width": config.model.text_dim}),
        media: ("data.cache", {"stand_in": "shapes files", "records": args.records,
                               "size": [data.frames, data.height, data.width]}),
        vae_dir: ("latent.path", {"stand_in": "vae", "seed": args.seed,
                                  "channels": config.latent.channels}),
        cache: ("data.cache", {"stand_in": "cache", "records": args.records, "seed": args.seed}),
    }
    todo = {folder: _claim(folder, field, source, settings)
            for folder, (field, settings) in what.items()}  # all checked before any is written
    if todo[encoder]:
        write_text_encoder(encoder, config.model.text_dim, args.seed)
        print(f"stand-ins: text encoder {encoder} (random T5, width {config.model.text_dim})")
    manifest = media / "manifest.jsonl"
    if todo[media]:
        write_shapes_files(media, data, args.records)
        print(f"stand-ins: {args.records} shapes samples in {media}")
    if todo[vae_dir]:
        shapes = ShapesDataset(data)
        probe = [shapes[i].pixels for i in range(min(args.records, 8))]
        write_vae(vae_dir, config.latent.channels, args.seed, probe)
        print(f"stand-ins: VAE {vae_dir} (random, {config.latent.channels} latent channels)")
    for folder in (encoder, media, vae_dir):
        if todo[folder]:
            _mark(folder, what[folder][1])
    if todo[cache]:  # claimed before it is written: a cache cut short is continued by a rerun
        cache.mkdir(parents=True, exist_ok=True)
        _mark(cache, what[cache][1])
    status = cache_tool.run(argparse.Namespace(
        config=args.config, manifest=str(manifest), out=str(cache), shard_size=256,
        dtype="float32", overwrite=False, overrides=list(args.overrides)))
    if status == 0:
        print(json.dumps({"text.encoder": str(encoder), "latent.path": str(vae_dir),
                          "data.cache": str(cache)}))
    return status
