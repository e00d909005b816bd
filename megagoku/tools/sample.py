"""`megagoku sample --checkpoint DIR --prompt TEXT --out FILE [options]`: text-to-video (MP4 or
GIF) or text-to-image (PNG, or --frames 1) from a checkpoint, a run directory (its newest
valid checkpoint), a model directory written by `megagoku convert`, or a file in Goku's released
layout (`megagoku convert --format goku-official`). Unset options default to
the checkpoint's training config; any size the model's patches divide works (3D RoPE
extrapolates). `--prompts FILE` samples every line of FILE (blank and # lines skipped) into the
folder `--out` as `--format` files; `--seeds N` gives N samples per prompt (seeds seed..seed+N-1).
A progress line per Euler step shows the rate and ETA, and work that will take long on the
device (a 512x512 video on a CPU) is said before it starts. Under torchrun or
`megagoku launch`, `--ulysses N` (and `--tensor-parallel N`) split a long video over N ranks;
the first rank writes the files. `--image FIRST.png` (image-to-video, a model trained with
`model.image_condition`) starts every video from that frame, resized to cover the video's size
and centre-cropped."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Optional


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate videos or images from prompts",
                              description=__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory, run directory, model directory (megagoku "
                        "convert; its one kind of weights), or goku-official .safetensors file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", help="one prompt")
    which.add_argument("--prompts", metavar="FILE", help="a file of prompts, one per line")
    p.add_argument("--out", required=True,
                   help="output file (.mp4, .webm, .gif or .png); with --prompts, a folder")
    p.add_argument("--format", choices=("mp4", "webm", "gif", "png"),
                   help="with --prompts: the files' format (default mp4; png for --frames 1)")
    p.add_argument("--image", help="image-to-video: the first frame (PNG/JPEG), for I2V models")
    p.add_argument("--seeds", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--batch", type=int, default=4, help="videos generated together (default 4)")
    p.add_argument("--frames", type=int, help="video frames (1 = an image)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="Euler steps")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--upscale", type=int, help="nearest-neighbour upscaling of the written file")
    p.add_argument("--weights", choices=("ema", "model"),
                   help="a checkpoint's EMA (default) or raw weights; a model directory holds "
                        "one kind (asking for the other is an error)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights that hold NaN or inf (refused otherwise)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU when one is present")
    p.add_argument("--tensor-parallel", type=int, default=1,
                   help="split the model over this many ranks (under torchrun / megagoku "
                        "launch; tensor-parallel x ulysses = the number of ranks)")
    p.add_argument("--ulysses", type=int, default=1,
                   help="split the sequence over this many ranks (long videos on several GPUs)")
    p.set_defaults(func=run)


def read_prompts(path: str) -> list[str]:
    """The prompts of a UTF-8 file, one per line (blank and # lines skipped); a byte-order mark
    is dropped (so that a first-line comment stays a comment). Any problem is one ConfigError
    line naming the file."""
    from megagoku.config import ConfigError

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"--prompts {path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # utf-8, without a leading BOM
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"--prompts {path}: line {line}: not UTF-8 text (byte "
                          f"0x{data[e.start]:02x} at offset {e.start}); save the file as "
                          "UTF-8") from None
    lines = text.splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"--prompts {path}: no prompts (one per line; # starts a comment)")
    return prompts


def read_first_frame(path: str, height: int, width: int):
    """The image as (3, height, width) in [-1, 1]: resized to cover, centre-cropped."""
    from megagoku.config import ConfigError
    from megagoku.data.decode import DecodeError, Target, decode_image

    try:
        return decode_image(Path(path), Target(height, width))[:, 0]
    except DecodeError as e:
        raise ConfigError(f"--image {e}") from None


def check_writable_folder(folder: Path) -> None:
    """Before any work: the output folder exists (or is made) and takes a file."""
    from megagoku.config import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".megagoku-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out: cannot write into {folder} ({e.strerror})") from None


def slug(prompt: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:60] or "prompt"


class StepProgress:
    """A line per Euler step (rewritten in place on a terminal): step, rate, ETA."""

    def __init__(self, label: str, stream=None):
        from megagoku.progress import RateMeter

        self.label, self.stream = label, stream or sys.stderr
        self.meter = RateMeter(0)

    def __call__(self, done: int, total: int) -> None:
        from megagoku.progress import format_duration

        self.meter.total = total
        rate, eta = self.meter.measure(done)
        end = "\n" if done == total or not self.stream.isatty() else "\r"
        print(f"{self.label}: step {done}/{total}, {rate:.2f} step/s, "
              f"ETA {format_duration(eta)}", end=end, file=self.stream, flush=True)


# Forward FLOPs per Euler step above which the work is said to be large on a CPU: a step then
# takes seconds or more (measured here: 0.35 TFLOP steps of the tiny model at 512x512 in ~6 s on
# two cores, ~0.06 TFLOP/s; attention over long videos is slower still).
LARGE_STEP_FLOPS_CPU = 1e11


def work_warning(gen, count: int, frames: int, height: int, width: int, guided: bool,
                 device_type: str) -> Optional[str]:
    """A warning line when generating `count` samples of this size is large for the device
    (None otherwise): tokens per sample and the FLOPs of one Euler step."""
    from megagoku.models.flops import flops_per_token

    cfg = gen.config
    _, lt, lh, lw = gen.latent_space.latent_shape(frames, height, width)
    patch = cfg.model.patch_size
    tokens = max(1, (lt // patch[0]) * (lh // patch[1]) * (lw // patch[2]))
    per_step = (2 if guided else 1) * count * tokens * \
        flops_per_token(cfg.model, tokens, cfg.text.max_length)["forward"]
    if device_type == "cuda" or per_step < LARGE_STEP_FLOPS_CPU:
        return None
    return (f"warning: {count} sample(s) of {frames}x{height}x{width} are {tokens} tokens each, "
            f"{per_step / 1e12:.1f} TFLOP per Euler step on the CPU: expect seconds to minutes "
            "per step (a progress line follows each step); a GPU (--device cuda), a smaller "
            "--height/--width/--frames, fewer --steps or --batch make it faster")


def run(args: argparse.Namespace) -> int:
    from megagoku.config import ConfigError
    from megagoku.data.video_io import check_output_path
    from megagoku.inference import load_generator
    from megagoku.train.checkpoint import load_checkpoint, weights_kind

    for name in ("frames", "height", "width", "steps", "fps", "upscale", "seeds", "batch",
                 "tensor_parallel", "ulysses"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be positive, got "
                              f"{getattr(args, name)}")
    if args.cfg is not None and not math.isfinite(args.cfg):  # nan/inf: an all-black video
        raise ConfigError(f"--cfg: must be a finite number, got {args.cfg}")
    from megagoku.parallel import resolve_device

    try:
        resolve_device(args.device)
    except RuntimeError as e:
        raise ConfigError(f"--device {args.device}: {e}") from None
    if args.prompts:
        prompts = read_prompts(args.prompts)
        if Path(args.out).suffix.lower() in (".mp4", ".webm", ".gif", ".png"):
            raise ConfigError(f"--out {args.out}: with --prompts, --out is a folder")
        suffix = "." + (args.format or ("png" if args.frames == 1 else "mp4"))
        check_writable_folder(Path(args.out))
    else:
        prompts = [args.prompt]
        try:
            check_output_path(args.out)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        suffix = Path(args.out).suffix.lower()
        check_writable_folder(Path(args.out).parent)
    from megagoku.parallel.weights import WeightsMismatch
    from megagoku.train.checkpoint import CheckpointError

    try:
        config_dict, state, ckpt = load_checkpoint(args.checkpoint, args.weights,
                                                   args.allow_nonfinite)
    except ValueError as e:  # a --weights kind the model directory does not hold
        raise ConfigError(str(e)) from None
    weights = weights_kind(ckpt, args.weights)
    try:
        gen = load_generator(config_dict, state, f"{ckpt}/config.yaml", args.device,
                             args.tensor_parallel, args.ulysses)
    except WeightsMismatch as e:  # the weights against the model their own config builds
        raise CheckpointError(f"{ckpt}: {e}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from megagoku.parallel import collectives
    from megagoku.parallel.distributed import shutdown

    owns_group = collectives.world_size() > 1  # load_generator started it for a split model
    failed = True
    try:
        status = write_samples(args, gen, prompts, suffix, ckpt, weights)
        failed = False
        return status
    finally:  # without the barrier after a failure: the other ranks may be gone
        if owns_group:
            shutdown(barrier=not failed)


def write_samples(args: argparse.Namespace, gen, prompts: list[str], suffix: str, ckpt,
                  weights: str) -> int:
    """Every rank computes (collective under TP / Ulysses); the first one writes, and says which
    `weights` (ema or model) it sampled."""
    from megagoku.config import ConfigError
    from megagoku.data.video_io import write_video
    from megagoku.parallel import collectives

    first = collectives.rank() == 0
    data, sample = gen.config.data, gen.config.sample
    pick = lambda value, default: default if value is None else value  # noqa: E731
    frames = pick(args.frames, 1 if suffix == ".png" else data.frames)
    height, width = pick(args.height, data.height), pick(args.width, data.width)
    image = read_first_frame(args.image, height, width) if args.image else None
    seed = pick(args.seed, sample.seed)
    # (prompt index, prompt, seed) of every sample; a sample's seed fixes its noise, so it does
    # not change with the batch it rides in.
    jobs = [(i, p, seed + k) for i, p in enumerate(prompts) for k in range(args.seeds)]
    cfg_scale = pick(args.cfg, sample.cfg_scale)
    warning = work_warning(gen, min(args.batch, len(jobs)), frames, height, width,
                           cfg_scale != 1.0, next(gen.model.parameters()).device.type)
    if first and warning:
        print(warning, file=sys.stderr, flush=True)
    written = []
    for start in range(0, len(jobs), args.batch):
        chunk = jobs[start:start + args.batch]
        progress = StepProgress(f"samples {start + 1}-{start + len(chunk)} of {len(jobs)}") \
            if first else None
        try:
            videos = gen.generate([p for _, p, _ in chunk], frames, height, width,
                                  pick(args.steps, sample.steps), cfg_scale,
                                  progress=progress, seeds=[s for _, _, s in chunk],
                                  images=None if image is None else [image] * len(chunk))
        except ValueError as e:
            raise ConfigError(f"--image {args.image}: {e}" if image is not None else str(e)) \
                from None
        for (i, prompt, s), video in zip(chunk, videos if first else []):
            if args.prompts:
                path = Path(args.out) / f"{i:03d}_{slug(prompt)}_seed{s}{suffix}"
            elif args.seeds > 1:
                path = Path(args.out).with_name(f"{Path(args.out).stem}_seed{s}{suffix}")
            else:
                path = Path(args.out)
            written.append(write_video(path, video, pick(args.fps, sample.fps),
                                       pick(args.upscale, sample.upscale)))
    if first:
        size = f"{videos[0].shape[2]}x{videos[0].shape[3]}"
        where = written[0] if len(written) == 1 else \
            f"{len(written)} files in {Path(written[0]).parent}"
        print(f"wrote {where} ({frames} frame(s) of {size} from {ckpt}, "
              f"{'EMA' if weights == 'ema' else 'raw (non-EMA)'} weights)")
    return 0
