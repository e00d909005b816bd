"""`megagoku sample --checkpoint DIR --prompt TEXT --out FILE [options]`: text-to-video (MP4 or
GIF) or text-to-image (PNG, or --frames 1) from a checkpoint, a run directory (its newest
valid checkpoint) or a model directory written by `megagoku convert`. Unset options default to the checkpoint's training config."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate a video or image from a prompt",
                              description=__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory, run directory, or model directory (megagoku "
                        "convert; its one kind of weights)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="output file: .mp4, .webm, .gif or .png")
    p.add_argument("--frames", type=int, help="video frames (1 = an image)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="Euler steps")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--upscale", type=int, help="nearest-neighbour upscaling of the written file")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU when one is present")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megagoku.config import ConfigError
    from megagoku.data.video_io import check_output_path, write_video
    from megagoku.inference import load_generator
    from megagoku.train.checkpoint import load_checkpoint

    try:
        check_output_path(args.out)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name in ("frames", "height", "width", "steps", "fps", "upscale"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name}: must be positive, got {getattr(args, name)}")
    config_dict, state, ckpt = load_checkpoint(args.checkpoint, args.weights)
    gen = load_generator(config_dict, state, f"{ckpt}/config.yaml", args.device)
    data, sample = gen.config.data, gen.config.sample
    pick = lambda value, default: default if value is None else value  # noqa: E731
    frames = pick(args.frames, 1 if args.out.lower().endswith(".png") else data.frames)
    video = gen.generate([args.prompt], frames, pick(args.height, data.height),
                         pick(args.width, data.width), pick(args.steps, sample.steps),
                         pick(args.cfg, sample.cfg_scale), pick(args.seed, sample.seed))[0]
    out = write_video(args.out, video, pick(args.fps, sample.fps), pick(args.upscale, sample.upscale))
    print(f"wrote {out} ({frames} frame(s) of {video.shape[2]}x{video.shape[3]} from {ckpt})")
    return 0
