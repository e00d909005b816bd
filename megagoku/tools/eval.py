"""`megagoku eval (--run-dir RUN | --model MODEL_DIR | --checkpoint CKPT) [options]`: score a
text-to-video model trained on the built-in shapes data, or export samples for VBench / GenEval.

On the shapes data: `--samples` clips per prompt of the `--prompts` set (demo: the held-out
prompts and four seen ones; seen; held_out; all) and as many single-frame images per image
caption are generated with the model's sampler and read back: colour / shape / direction by the
in-repo classifier and colour / direction by the pixel rules, split into seen and held-out
prompts; and fd_shapes3d_video / fd_shapes3d_image, a Fréchet distance between generated and
real clips in the classifier's features (NOT FVD or FID; only comparable between runs scored
with the same classifier), with the real-vs-real floor at the same sample size beside it. The
classifier is trained on first use (~1-2 min on one core) and cached ($MEGAGOKU_EVAL_CACHE or
~/.cache/megagoku/eval). Prints a table; writes eval.json to --out (default: RUN/eval or
MODEL_DIR/eval).

`--export vbench DIR`: the evaluated videos as DIR/videos/<prompt>-<index>.mp4, with the prompt
list DIR/prompts.txt and DIR/full_info.json (`vbench evaluate --videos_path DIR/videos
--full_json_dir DIR/full_info.json`, or its custom-input mode). `--export geneval DIR`: the
evaluated images as DIR/images/<NNNNN>/{metadata.jsonl, samples/<NNNN>.png, grid.png}, prompts
in DIR/evaluation_metadata.jsonl. With `--benchmark-prompts FILE` the prompts come from the
benchmark's own list instead (VBench: a prompts .txt or VBench_full_info.json; GenEval:
evaluation_metadata.jsonl), VBench's 5 or GenEval's 4 samples per prompt unless --samples says
otherwise, and no in-repo scores (they only know the shapes).

`--image-to-video N`: for an image-to-video model (model.image_condition), N first frames of
held-out clips, each asked to move in all four directions: the share that keeps the frame's
colour, the share that moves as the prompt says, and how far the first frame is from the given
one (megagoku/evaluation/image_to_video.py). A text-to-video model gets the same prompts without
the frames, as a baseline. Writes i2v.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score a model on the built-in data (adherence, "
                              "fd_shapes3d) or export samples for VBench / GenEval",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-dir", help="a training run directory (its newest valid checkpoint)")
    which.add_argument("--model", help="a model directory written by megagoku convert")
    which.add_argument("--checkpoint", help="one checkpoint directory")
    p.add_argument("--prompts", choices=("demo", "seen", "held_out", "all"),
                   help="the shapes prompt set (default: the run's eval.prompts)")
    p.add_argument("--samples", type=int, help="clips per prompt (default: the run's "
                   "eval.samples; with --benchmark-prompts VBench's 5 or GenEval's 4)")
    p.add_argument("--no-images", action="store_true", help="score videos only")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--cfg", type=float, help="CFG scale (default: the run's sample.cfg_scale)")
    p.add_argument("--seed", type=int, help="first noise seed (default: the run's sample.seed)")
    p.add_argument("--batch", type=int, default=16, help="clips generated at once")
    p.add_argument("--weights", choices=("ema", "model"),
                   help="a checkpoint's EMA (default) or raw weights; a model directory holds "
                        "one kind")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", help="where eval.json goes (default: <run/model dir>/eval)")
    p.add_argument("--export", nargs=2, metavar=("vbench|geneval", "DIR"),
                   help="also write the samples in the benchmark's layout under DIR")
    p.add_argument("--benchmark-prompts", metavar="FILE",
                   help="with --export: generate the benchmark's own prompts instead")
    p.add_argument("--upscale", type=int, default=8,
                   help="nearest-neighbour upscaling of exported files (default 8)")
    p.add_argument("--fps", type=int, help="exported video frame rate (default: sample.fps)")
    p.add_argument("--image-to-video", type=int, metavar="N",
                   help="score first-frame conditioning on N held-out frames x 4 directions")
    p.set_defaults(func=run)


def _checked_args(args: argparse.Namespace):
    from megagoku.config import ConfigError

    for name in ("samples", "steps", "batch", "upscale", "fps", "image_to_video"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name}: must be positive, got {value}")
    if args.export and args.export[0] not in ("vbench", "geneval"):
        raise ConfigError(f"--export: {args.export[0]!r} is not vbench or geneval")
    if args.benchmark_prompts and not args.export:
        raise ConfigError("--benchmark-prompts: needs --export vbench|geneval DIR")
    if args.model:
        from megagoku.train.checkpoint import is_model_dir

        if not is_model_dir(args.model):
            raise ConfigError(f"--model {args.model}: not a model directory (model.safetensors "
                              "+ config.json from megagoku convert); a run: --run-dir")


class Progress:
    """One line per batch: clips done of all, rate, ETA."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.meters: dict = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        from megagoku.progress import RateMeter

        meter = self.meters.setdefault(what, RateMeter(total))
        if done == 0:  # the start of the work: the meter starts now
            return
        rate, _ = meter.measure(done)
        print(f"eval {what}: {done}/{total} clips, {rate:.2f} clips/s, ETA {meter.eta(done)}",
              file=self.stream, flush=True)


def run(args: argparse.Namespace) -> int:
    from megagoku.config import ConfigError

    _checked_args(args)
    from megagoku.inference import load_generator
    from megagoku.train.checkpoint import load_checkpoint, weights_kind

    source = args.run_dir or args.model or args.checkpoint
    try:
        config_dict, state, ckpt = load_checkpoint(source, args.weights)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    args.weights = weights_kind(ckpt, args.weights)  # what was used, for the report
    try:
        generator = load_generator(config_dict, state, f"{ckpt}/config.yaml", args.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.benchmark_prompts:
        return export_benchmark_prompts(generator, args)
    if args.image_to_video:
        return image_to_video(generator, ckpt, source, args)
    cfg = generator.config
    if cfg.data.kind != "shapes":
        raise ConfigError(f"{ckpt}/config.yaml: data.kind: {cfg.data.kind}: the in-repo scores "
                          "read the built-in shapes data back; for other models export samples "
                          "with --export vbench|geneval DIR --benchmark-prompts FILE")
    from megagoku.evaluation.classifier import load_or_train
    from megagoku.evaluation.suite import EvalSettings, evaluate_generator, summary_table

    pick = lambda value, default: default if value is None else value  # noqa: E731
    settings = EvalSettings(prompts=pick(args.prompts, cfg.eval.prompts),
                            samples=pick(args.samples, cfg.eval.samples),
                            images=cfg.eval.images and not args.no_images,
                            steps=pick(args.steps, cfg.sample.steps),
                            cfg_scale=pick(args.cfg, cfg.sample.cfg_scale),
                            seed=pick(args.seed, cfg.sample.seed), batch=args.batch)
    classifier = load_or_train(cfg.data, say=lambda s: print(s, file=sys.stderr, flush=True))
    result = evaluate_generator(generator, classifier, settings, Progress())
    out = Path(args.out) if args.out else Path(source) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report = {"source": str(ckpt), "weights": args.weights, **result.as_dict()}
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    print(summary_table(result.summary))
    print(f"\n{len(result.records)} samples scored in {result.seconds:.0f} s; report: "
          f"{out / 'eval.json'}")
    if args.export:
        export_results(result, cfg, args)
    return 0


def export_results(result, cfg, args) -> None:
    """The evaluated samples in a benchmark's layout, with our prompt set in its format."""
    from megagoku.evaluation import benchmarks as bm

    kind, root = args.export[0], Path(args.export[1])
    fps = args.fps or cfg.sample.fps
    if kind == "vbench":
        pairs = [(r, v) for r, v in zip(result.records, result.videos) if r.kind == "video"]
        counts: dict[str, int] = {}
        for record, video in pairs:
            index = counts.get(record.prompt, 0)
            counts[record.prompt] = index + 1
            bm.write_vbench_sample(root / "videos", record.prompt, index, video, fps,
                                   args.upscale)
        prompts = bm.vbench_records(list(counts))
        bm.write_vbench_prompts(prompts, root / "prompts.txt", root / "full_info.json")
        note = "" if set(counts.values()) == {bm.VBENCH_SAMPLES_PER_PROMPT} else \
            f" (VBench expects {bm.VBENCH_SAMPLES_PER_PROMPT} per prompt: --samples 5)"
        print(f"VBench: {len(pairs)} videos in {root / 'videos'}{note}; prompts "
              f"{root / 'prompts.txt'}, {root / 'full_info.json'}")
        return
    images: dict[str, list] = {}
    for record, clip in zip(result.records, result.videos):
        if record.kind == "image":
            images.setdefault(record.prompt, []).append(clip)
    if not images:
        print("GenEval: no images were evaluated (drop --no-images)", file=sys.stderr)
        return
    prompts = bm.geneval_records(list(images))
    for i, prompt in enumerate(prompts):
        bm.write_geneval_prompt(root / "images", i, prompt, images[prompt.prompt], args.upscale)
    bm.write_geneval_prompts(prompts, root / "evaluation_metadata.jsonl")
    print(f"GenEval: {sum(map(len, images.values()))} images in {root / 'images'}; prompts "
          f"{root / 'evaluation_metadata.jsonl'}")


def export_benchmark_prompts(generator, args) -> int:
    """Generate a benchmark's own prompts into its layout (no in-repo scores)."""
    from megagoku.config import ConfigError
    from megagoku.evaluation import benchmarks as bm

    kind, root = args.export[0], Path(args.export[1])
    try:
        prompts = bm.read_prompts(args.benchmark_prompts, kind)
        if kind == "vbench":
            for p in prompts:
                bm.vbench_video_name(p.prompt, 0)  # refuse unusable names before any work
    except bm.BenchmarkError as e:
        raise ConfigError(f"--benchmark-prompts: {e}") from None
    cfg = generator.config
    per = args.samples or (bm.VBENCH_SAMPLES_PER_PROMPT if kind == "vbench"
                           else bm.GENEVAL_SAMPLES_PER_PROMPT)
    frames = cfg.data.frames if kind == "vbench" else 1
    seed = cfg.sample.seed if args.seed is None else args.seed
    steps = args.steps or cfg.sample.steps
    scale = cfg.sample.cfg_scale if args.cfg is None else args.cfg
    jobs = [(i, p, seed + k) for i, p in enumerate(prompts) for k in range(per)]
    progress, made = Progress(), {}
    progress(kind, 0, len(jobs))
    for start in range(0, len(jobs), args.batch):
        chunk = jobs[start:start + args.batch]
        clips = generator.generate([p.prompt for _, p, _ in chunk], frames, cfg.data.height,
                                   cfg.data.width, steps, scale, seeds=[s for _, _, s in chunk])
        for (i, p, s), clip in zip(chunk, clips):
            made.setdefault(i, []).append(clip)
            if kind == "vbench":
                bm.write_vbench_sample(root / "videos", p.prompt, s - seed, clip,
                                       args.fps or cfg.sample.fps, args.upscale)
        progress(kind, start + len(chunk), len(jobs))
    if kind == "vbench":
        bm.write_vbench_prompts(prompts, root / "prompts.txt", root / "full_info.json")
        print(f"VBench: {len(jobs)} videos in {root / 'videos'}; run vbench evaluate "
              f"--videos_path {root / 'videos'} on the cluster")
    else:
        for i, p in enumerate(prompts):
            bm.write_geneval_prompt(root / "images", i, p, made[i], args.upscale)
        bm.write_geneval_prompts(prompts, root / "evaluation_metadata.jsonl")
        print(f"GenEval: {len(jobs)} images in {root / 'images'}; run GenEval's "
              f"evaluation/evaluate_images.py {root / 'images'} on the cluster")
    return 0


def image_to_video(generator, ckpt, source: str, args: argparse.Namespace) -> int:
    from megagoku.config import ConfigError
    from megagoku.evaluation.image_to_video import evaluate

    cfg = generator.config
    if cfg.data.kind != "shapes":
        raise ConfigError(f"{ckpt}/config.yaml: data.kind: {cfg.data.kind}: --image-to-video "
                          "reads the built-in shapes data back")
    pick = lambda value, default: default if value is None else value  # noqa: E731
    report = evaluate(generator, args.image_to_video, pick(args.steps, cfg.sample.steps),
                      pick(args.cfg, cfg.sample.cfg_scale), pick(args.seed, cfg.sample.seed))
    out = Path(args.out) if args.out else Path(source) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "i2v.json").write_text(json.dumps({"source": str(ckpt), **report}, indent=1))
    kind = "image-to-video" if report["image_conditioned"] else "text-to-video (no frame)"
    print(f"{kind}, {report['cases']} videos: colour kept {report['colour_kept']:.0%}, "
          f"direction followed {report['direction_followed']:.0%} (chance 25%), first frame "
          f"off by {report['first_frame_error']:.3f} (mean abs) and "
          f"{report['centroid_shift_px']:.1f} px; report: {out / 'i2v.json'}")
    return 0
