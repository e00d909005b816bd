"""`megagoku demo [--config configs/tiny.yaml] [--run-dir checkpoints/demo]`: the embedded default.

Trains the tiny model on the built-in moving shapes, then samples videos for the held-out prompts
(colour/shape/direction triples never shown in training) and for seen ones, writes them as GIFs
with an overview picture and a loss curve, and checks every generated video from its pixels:
is the shape the prompt's colour, and does it move the prompt's way?

A config in a causal VAE's latent space (`configs/demo_latent.yaml`) runs the latent demo
(`tools/demo_latent.py`): VAE, files, cache, Transformer, then the same samples and checks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from megagoku.config import ConfigError, load_training_config
from megagoku.data.shapes import demo_prompts
from megagoku.launch.exit_codes import REQUEUE, ROLLBACK


def plot_loss(metrics_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in (("loss", "all"), ("loss_video", "videos"), ("loss_image", "images")):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), label=label, linewidth=1.2 if key == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def overview(rows: list[tuple[str, list[np.ndarray]]], out: Path) -> Path:
    """One row per prompt: the frames of its first sample, left to right."""
    from megagoku.data.video_io import frame_strip

    strips = [frame_strip(frames) for _, frames in rows]
    width = max(s.shape[1] for s in strips)
    gap = 4
    canvas = np.full((sum(s.shape[0] + gap for s in strips), width, 3), 255, dtype=np.uint8)
    y = 0
    for strip in strips:
        canvas[y:y + strip.shape[0], :strip.shape[1]] = strip
        y += strip.shape[0] + gap
    Image.fromarray(canvas).save(out)
    return out


def evaluate_and_write(generator, prompts: list[str], seeds: int, out_dir: Path,
                       upscale: int, fps: int) -> tuple[dict, list]:
    from megagoku.data import describe_video, parse_caption
    from megagoku.data.video_io import to_uint8_frames, write_video

    cfg = generator.config
    results, rows = [], []
    for prompt in prompts:
        videos = generator.generate([prompt] * seeds, cfg.data.frames, cfg.data.height,
                                    cfg.data.width, cfg.sample.steps, cfg.sample.cfg_scale,
                                    cfg.sample.seed)
        want = parse_caption(prompt)
        slug = prompt.removeprefix("a ").replace(" ", "_")
        for i, video in enumerate(videos):
            write_video(out_dir / f"{slug}_{i}.gif", video, fps, upscale)
            seen = describe_video(video)
            results.append({"prompt": prompt, "seed": cfg.sample.seed + i, **{
                f"{k}_ok": seen[k] == want[k] for k in ("colour", "direction")},
                "seen_colour": seen["colour"], "seen_direction": seen["direction"]})
        rows.append((prompt, to_uint8_frames(videos[0], max(1, upscale // 2))))
    summary = {key: float(np.mean([r[key] for r in results])) for key in ("colour_ok", "direction_ok")}
    return {"summary": summary, "samples": results}, rows


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train the tiny model on built-in data and sample it",
                              description=__doc__)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", default="checkpoints/demo")
    p.add_argument("--seeds", type=int, default=4, help="samples per prompt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_training_config(args.config, args.overrides)
    if args.seeds <= 0:
        raise ConfigError(f"--seeds: must be positive, got {args.seeds}")
    if config.latent.kind == "causal_vae":  # the latent demo trains its VAE and cache first
        from megagoku.tools.demo_latent import run_latent

        return run_latent(args, config)
    from megagoku.train.trainer import train

    run_dir = Path(args.run_dir)
    samples_dir = run_dir / "samples"
    # The demo's run dir is its own: a rerun replaces the previous run's outputs (train's
    # --overwrite, which refuses a live run's dir; the samples and curve only after that).
    result = train(config, run_dir, source=args.config, overwrite=True)
    shutil.rmtree(samples_dir, ignore_errors=True)
    (run_dir / "loss.png").unlink(missing_ok=True)
    stopped = stopped_early(result, config.train.steps, "to train from the start")
    if stopped is not None:
        return stopped
    report = report_samples(config, result.checkpoint, samples_dir, args.seeds)
    curve = plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
    print()
    print(f"trained {result.steps} steps; final loss {result.final_loss:.4f}")
    for split in report:
        s = report[split]["summary"]
        print(f"{split:>8} prompts: colour right {s['colour_ok']:.0%}, "
              f"direction right {s['direction_ok']:.0%} "
              f"({len(report[split]['samples'])} videos, checked from pixels)")
    print(f"samples:     {samples_dir}/held_out/*.gif, {samples_dir}/seen/*.gif")
    print(f"overview:    {samples_dir / 'overview.png'}  (rows: held-out prompts, then seen; "
          "frames left to right)")
    print(f"loss curve:  {curve}")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0


def stopped_early(result, steps: int, rerun: str) -> int | None:
    """The exit code when training stopped on a signal or a loss anomaly (a half-trained model
    is not the demo's result: nothing is sampled or reported), else None."""
    if result.stop_reason not in ("signal", "rollback"):
        return None
    why = "a stop signal" if result.stop_reason == "signal" else "a loss anomaly"
    print(f"demo stopped by {why} at step {result.steps} of {steps}: not sampled; checkpoint: "
          f"{result.checkpoint}; run `megagoku demo` again {rerun}", file=sys.stderr)
    return REQUEUE if result.stop_reason == "signal" else ROLLBACK


def report_samples(config, checkpoint: Path, samples_dir: Path, seeds: int) -> dict:
    """The held-out and seen prompts sampled with the checkpoint's EMA weights (decoded by its
    latent space), written as GIFs with an overview picture, and checked from their pixels;
    the report is also written to samples_dir/report.json."""
    from megagoku.inference import load_generator
    from megagoku.train.checkpoint import load_checkpoint

    config_dict, state, ckpt = load_checkpoint(checkpoint, "ema")
    generator = load_generator(config_dict, state, f"{ckpt}/config.yaml")
    shutil.rmtree(samples_dir, ignore_errors=True)
    report = {}
    all_rows = []
    held_out, seen = demo_prompts(config.data)
    for split, prompts in (("held_out", held_out), ("seen", seen)):
        if not prompts:
            continue
        report[split], rows = evaluate_and_write(generator, prompts, seeds,
                                                 samples_dir / split, config.sample.upscale,
                                                 config.sample.fps)
        all_rows += rows
    (samples_dir / "report.json").write_text(json.dumps(report, indent=1))
    overview(all_rows, samples_dir / "overview.png")
    return report
