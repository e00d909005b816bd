"""`megagoku ablate rf-vs-ddpm`: Goku's Table 2 pilot (rectified flow against DDPM, class-
conditional ImageNet-256, FID at 400k / 1000k steps) scaled down to what a CPU can run.

The same model, data, optimizer, seed and step budget are trained twice in one process, once
with each objective, and scored at the same steps:

- model: the project's GokuTransformer (a tiny one by default), fed through the trainer's path:
  `PackingLoader` packs of patchified samples with cu_seqlens and (t, h, w) positions, caption
  features from the project's text encoder, CFG caption dropout. Both objectives start from the
  same initial weights (same seed) and see the same packs in the same order.
- data: single-frame images of the built-in shapes, caption-conditional on 12 classes
  ("a red circle": 4 colours x 3 shapes), random position.
- rf: `flow.rectified_flow.training_loss` (the trainer's objective and its `flow` settings:
  logit-normal t), sampled with Euler.
- ddpm: `flow.ddpm`: eps-prediction MSE, uniform t over T = 1000, linear (default, DDPM's and
  DiT's) or cosine betas, sampled with the ancestral DDPM sampler (or DDIM) respaced to the same
  number of steps as RF's Euler (same network evaluations per sample: the fair comparison at a
  fixed sampling cost; 1000 DDPM steps per sample would not fit a CPU budget), x0 clipped to
  [-1, 1] (pixel data).
- both: AdamW, linear warm-up then constant LR (so that an intermediate score does not depend on
  the total budget through a decay), gradient clipping, EMA weights for sampling, the same CFG
  scale, the same initial noise for every evaluation sample.
- score, at every `eval_every` steps: `samples_per_class` images per class, the Fréchet distance
  in the feature space of the in-repo classifier (`classifier.py`; **not FID**) against real
  images of the same classes, and conditional accuracy (the classifier reads colour and shape;
  both right = correct).

Output in `out`: results.json (every score, timings, settings), table.md, plot.png (score vs
step, both objectives), sample grids and each objective's final EMA weights (safetensors); the
step ratio at which RF first reaches DDPM's final score (the paper's "2.5x": DDPM 1000k vs RF
400k) or a plain statement that it does not, and the converse. What a budget this small can
show is limited: see BENCHMARKS.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import numpy as np
import torch

from megagoku.config.schema import DataConfig, FlowConfig, ModelConfig
from megagoku.data.packing import PackingLoader, grid_positions, unpatchify
from megagoku.data.shapes import ShapesDataset, parse_caption
from megagoku.evaluation.adherence import image_captions, real_clips
from megagoku.evaluation.classifier import ATTRIBUTES, load_or_train, predict
from megagoku.evaluation.frechet import frechet_distance_from_stats, gaussian_fit
from megagoku.flow import euler_sample, guided_velocity, sampling_schedule, training_loss
from megagoku.flow.ddpm import ddim_sample, ddpm_sample, ddpm_training_loss, make_schedule
from megagoku.models import TextEncoder, build_model
from megagoku.models.text_encoder import encoder_width
from megagoku.optim import EMA, Update, adamw, warmup_cosine
from megagoku.progress import RateMeter, format_duration
from megagoku.storage import write_tensors

OBJECTIVES = ("rf", "ddpm")


def tiny_ablation_model() -> ModelConfig:
    """0.8M parameters: 3 blocks of width 96 (4 heads of 24), 2x2 patches (64 tokens per 16x16
    image). The demo's 1.8M model runs half as many steps in the CPU budget."""
    return ModelConfig(name="ablation-tiny", depth=3, hidden_size=96, num_heads=4,
                       patch_size=(1, 2, 2), rope_split=(4, 10, 10))


@dataclass
class AblationConfig:
    steps: int = 2400
    eval_every: int = 400
    samples_per_class: int = 16  # generated images per class at every evaluation
    reference_per_class: int = 64  # real images per class, the Fréchet reference
    sample_steps: int = 50  # Euler steps (RF) = respaced ancestral steps (DDPM)
    ddpm_sampler: Literal["ancestral", "ddim"] = "ancestral"  # ancestral: DDPM's own
    sample_batch: int = 48  # images generated at once (48: the fastest per image here)
    cfg_scale: float = 1.5
    schedule: Literal["linear", "cosine"] = "linear"
    diffusion_steps: int = 1000  # DDPM's T
    image_size: int = 16
    batch_images: int = 32  # images per training pack
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    seed: int = 0
    device: str = "cpu"
    text_encoder: str = "builtin:all-minilm-l6-v2"
    model: ModelConfig = field(default_factory=tiny_ablation_model)
    flow: FlowConfig = field(default_factory=FlowConfig)  # RF: logit-normal t, no shift
    objectives: tuple[str, ...] = OBJECTIVES

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("steps", "eval_every", "samples_per_class", "reference_per_class",
                     "sample_steps", "sample_batch", "image_size", "batch_images",
                     "diffusion_steps"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        if self.eval_every > self.steps:
            yield "eval_every", f"{self.eval_every} is more than --steps {self.steps}"
        if self.sample_steps > self.diffusion_steps:
            yield "sample_steps", (f"{self.sample_steps} is more than DDPM's "
                                   f"{self.diffusion_steps} steps")
        if self.samples_per_class < 2:
            yield "samples_per_class", "a Fréchet distance needs at least 2 samples per class"
        if self.schedule not in ("linear", "cosine"):
            yield "schedule", f"must be linear or cosine, got {self.schedule!r}"
        if self.ddpm_sampler not in ("ancestral", "ddim"):
            yield "ddpm_sampler", f"must be ancestral or ddim, got {self.ddpm_sampler!r}"
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives:
            yield "objectives", f"must be some of {', '.join(OBJECTIVES)}, got {bad}"
        patch = self.model.patch_size
        if patch[0] != 1 or self.image_size % patch[1] or self.image_size % patch[2]:
            yield "image_size", (f"{self.image_size} px images do not fit patch "
                                 f"{list(patch)} (temporal patch 1, sizes divisible)")
        if not 0 <= self.caption_dropout < 1:
            yield "caption_dropout", f"must be in [0, 1), got {self.caption_dropout}"
        for name, message in self.model.problems():
            yield f"model.{name}", message

    def check(self, source: str = "ablate") -> None:
        for name, message in self.problems():
            raise ValueError(f"{source}: {name.replace('_', '-')}: {message}")

    @property
    def tokens_per_image(self) -> int:
        _, ph, pw = self.model.patch_size
        return (self.image_size // ph) * (self.image_size // pw)

    @property
    def data(self) -> DataConfig:
        """The training stream: images only, every class, `seed` (the default geometry
        otherwise, so the evaluation classifier is shared with `megagoku eval`)."""
        return DataConfig(height=self.image_size, width=self.image_size, image_fraction=1.0,
                          holdout=[], seed=self.seed,
                          tokens_per_step=self.batch_images * self.tokens_per_image)


def gpu_budget() -> AblationConfig:
    """The larger budget for one GPU (not run by us; see BENCHMARKS.md): a 9.3M-parameter model
    (6 blocks of width 256) on 32 px images (256 tokens each), 25x the steps at 4x the batch,
    100 samples per class, DiT's 250 sampling steps. The evaluation classifier for 32 px trains
    once on the CPU (a few minutes) and is cached."""
    return AblationConfig(
        steps=60000, eval_every=5000, samples_per_class=100, reference_per_class=500,
        sample_steps=250, sample_batch=600, image_size=32, batch_images=128, lr=5e-4,
        ema_decay=0.9999, device="cuda",
        model=ModelConfig(name="ablation-gpu", depth=6, hidden_size=256, num_heads=4,
                          patch_size=(1, 2, 2), rope_split=(16, 24, 24)))


class PackedDenoiser:
    """The model over one pack of images of `captions` (and their empty-caption copies under
    CFG): f(x, t) -> the guided prediction (velocity or eps) of every token."""

    def __init__(self, model, encoder: TextEncoder, captions: list[str], grid: tuple[int, ...],
                 cfg_scale: float, device: torch.device):
        self.model, self.cfg_scale, self.device = model, cfg_scale, device
        self.b = len(captions)
        self.n_tok = grid[0] * grid[1] * grid[2]
        self.guided = cfg_scale != 1.0
        copies = 2 if self.guided else 1
        self.copies = copies
        texts = captions + ([""] * self.b if self.guided else [])
        text, text_cu = encoder.encode(texts)
        self.text, self.text_cu = text.to(device), text_cu.to(device)
        self.positions = grid_positions(grid).repeat(copies * self.b, 1).to(device)
        self.cu = (torch.arange(copies * self.b + 1) * self.n_tok).to(torch.int32).to(device)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        value = float(t) if not isinstance(t, torch.Tensor) else float(t.reshape(-1)[0])
        tt = torch.full((self.copies * self.b,), value, device=self.device)
        out = self.model(x.repeat(self.copies, 1), tt, self.positions, self.cu, self.text,
                         self.text_cu)
        if not self.guided:
            return out
        cond, uncond = out.chunk(2)
        # CFG is the same linear combination for a velocity and for eps (flow/ddpm.guided_eps).
        return guided_velocity(cond, uncond, self.cfg_scale)


@torch.no_grad()
def generate_images(model, objective: str, cfg: AblationConfig, encoder: TextEncoder,
                    captions: list[str], seeds: list[int]) -> torch.Tensor:
    """(N, 3, 1, H, W) images in [-1, 1]: sample i starts from the noise of seeds[i], so every
    evaluation (and both objectives) starts from the same noise."""
    device = torch.device(cfg.device)
    patch = cfg.model.patch_size
    grid = (1, cfg.image_size // patch[1], cfg.image_size // patch[2])
    n_tok = grid[1] * grid[2]
    schedule = make_schedule(cfg.schedule, cfg.diffusion_steps)
    images = []
    for start in range(0, len(captions), cfg.sample_batch):
        chunk, chunk_seeds = captions[start:start + cfg.sample_batch], \
            seeds[start:start + cfg.sample_batch]
        noise = torch.cat([torch.randn(n_tok, cfg.model.patch_dim,
                                       generator=torch.Generator().manual_seed(s))
                           for s in chunk_seeds]).to(device)
        denoiser = PackedDenoiser(model, encoder, chunk, grid, cfg.cfg_scale, device)
        if objective == "rf":
            tokens = euler_sample(denoiser, noise, sampling_schedule(cfg.sample_steps, 1.0))
        elif cfg.ddpm_sampler == "ddim":
            tokens = ddim_sample(denoiser, noise, schedule, cfg.sample_steps, clip_x0=True)
        else:
            g = torch.Generator().manual_seed(chunk_seeds[0] + 7919)
            tokens = ddpm_sample(denoiser, noise, schedule, cfg.sample_steps, g, clip_x0=True)
        for piece in tokens.cpu().split(n_tok):
            images.append(unpatchify(piece, grid, patch, 3).clamp(-1, 1))
    return torch.stack(images)


@dataclass
class Reference:
    """What every evaluation compares with: the classifier, the class labels of the generated
    set, and the Gaussian fit of real images' features."""

    classifier: torch.nn.Module
    captions: list[str]
    labels: dict[str, torch.Tensor]
    mu: torch.Tensor
    sigma: torch.Tensor
    floor: float  # FD of another real set of the generated set's size: the estimate's floor


def build_reference(cfg: AblationConfig, say: Callable[[str], None]) -> Reference:
    classes = image_captions()
    classifier = load_or_train(cfg.data, say=say)
    real = real_clips(classes, cfg.reference_per_class, cfg.data, "image", seed=cfg.seed + 17)
    _, feats = predict(classifier, real)
    mu, sigma = gaussian_fit(feats)
    other = real_clips(classes, cfg.samples_per_class, cfg.data, "image", seed=cfg.seed + 29)
    _, other_feats = predict(classifier, other)
    floor = frechet_distance_from_stats(*gaussian_fit(other_feats), mu, sigma)
    captions = [c for c in classes for _ in range(cfg.samples_per_class)]
    labels = {name: torch.tensor([ATTRIBUTES[name].index(parse_caption(c)[name])
                                  for c in captions]) for name in ("colour", "shape")}
    return Reference(classifier, captions, labels, mu, sigma, floor)


def score(images: torch.Tensor, ref: Reference) -> dict[str, float]:
    preds, feats = predict(ref.classifier, images)
    colour = preds["colour"] == ref.labels["colour"]
    shape = preds["shape"] == ref.labels["shape"]
    return {"fd": frechet_distance_from_stats(*gaussian_fit(feats), ref.mu, ref.sigma),
            "accuracy": float((colour & shape).float().mean()),
            "colour_accuracy": float(colour.float().mean()),
            "shape_accuracy": float(shape.float().mean())}


class Progress:
    """One line every ~10 s: objective, step, loss, rate, and the ETA of the whole ablation (both
    objectives' steps at the rate measured so far, evaluations included: they come at a fixed
    interval of steps)."""

    def __init__(self, cfg: AblationConfig, say: Callable[[str], None]):
        self.cfg, self.say = cfg, say
        self.meter = RateMeter(cfg.steps * len(cfg.objectives))
        self.trained = 0
        self.last = 0.0

    def step(self, objective: str, step: int, loss: float) -> None:
        self.trained += 1
        now = self.meter.elapsed()
        if now - self.last > 10 or step == self.cfg.steps:
            self.last = now
            rate, eta = self.meter.measure(self.trained)
            self.say(f"[{objective}] step {step}/{self.cfg.steps} loss {loss:.4f} "
                     f"{rate:.2f} step/s, elapsed {format_duration(now)} "
                     f"ETA {format_duration(eta)}")


def eval_steps(cfg: AblationConfig) -> list[int]:
    steps = list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    return steps if steps and steps[-1] == cfg.steps else steps + [cfg.steps]


def train_objective(objective: str, cfg: AblationConfig, encoder: TextEncoder, ref: Reference,
                    progress: Progress, out: Path, say: Callable[[str], None]) -> list[dict]:
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)  # the same initial weights for both objectives
    model = build_model(cfg.model).to(device)
    sampler_model = build_model(cfg.model).to(device).eval()
    ema = EMA(model, cfg.ema_decay)
    # The project's update (optim.Update): clipping, AdamW, warm-up then a constant LR (so that
    # an intermediate score does not depend on the total budget through a decay), the EMA.
    update = Update(model, adamw(model.parameters(), lr=cfg.lr, weight_decay=0.0),
                    cfg.grad_clip, warmup_cosine(cfg.warmup_steps, cfg.steps), ema,
                    use_deepspeed=False)
    data = cfg.data
    loader = PackingLoader(ShapesDataset(data), lambda pixels: pixels, cfg.model.patch_size,
                           data.tokens_per_step)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    schedule = make_schedule(cfg.schedule, cfg.diffusion_steps)
    checkpoints = set(eval_steps(cfg))
    seeds = [cfg.seed * 100003 + i for i in range(len(ref.captions))]
    records, losses = [], []
    model.train()
    for step in range(1, cfg.steps + 1):
        batch = loader.next_pack().to(device)
        drop = (torch.rand(batch.num_samples, generator=g) < cfg.caption_dropout).tolist()
        text, text_cu = encoder.encode(["" if d else c for d, c in zip(drop, batch.captions)])
        text, text_cu = text.to(device), text_cu.to(device)

        def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(x_t, t, batch.positions, batch.cu_seqlens, text, text_cu)

        counts = batch.tokens_per_sample()
        if objective == "rf":
            loss, _, _ = training_loss(net, batch.tokens, batch.segment, counts, cfg.flow, g)
        else:
            loss, _, _ = ddpm_training_loss(net, batch.tokens, batch.segment, counts, schedule,
                                            g, cfg.flow.loss_weighting)
        update(loss)
        losses.append(loss.item())
        progress.step(objective, step, float(np.mean(losses[-50:])))
        if step in checkpoints:
            t1 = time.perf_counter()
            sampler_model.load_weights(ema.state_dict(model.weights()))
            images = generate_images(sampler_model, objective, cfg, encoder, ref.captions, seeds)
            scores = score(images, ref)
            seconds = time.perf_counter() - t1
            records.append({"objective": objective, "step": step, **scores,
                            "loss": float(np.mean(losses[-cfg.eval_every:])),
                            "eval_seconds": round(seconds, 1)})
            say(f"[{objective}] step {step}: fd_shapes {scores['fd']:.3f}, conditional "
                f"accuracy {scores['accuracy']:.1%} (eval {seconds:.0f} s)")
            if step == cfg.steps:
                save_grid(images, cfg.samples_per_class, out / f"samples_{objective}.png")
                # The final EMA weights, to sample again with other settings (safetensors).
                write_tensors(out / f"model_{objective}.safetensors",
                              {k: v.contiguous().cpu()
                               for k, v in ema.state_dict(model.weights()).items()})
    return records


def save_grid(images: torch.Tensor, per_class: int, path: Path, columns: int = 8,
              upscale: int = 4) -> Path:
    """One row per class, its first `columns` samples, upscaled."""
    from PIL import Image

    rows = []
    for c in range(len(images) // per_class):
        row = images[c * per_class:c * per_class + min(columns, per_class), :, 0]
        rows.append(torch.cat(list(row), dim=2))  # (3, H, columns*W)
    grid = ((torch.cat(rows, dim=1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = grid.permute(1, 2, 0).numpy().repeat(upscale, 0).repeat(upscale, 1)
    Image.fromarray(array).save(path)
    return path


def first_reaching(curve: list[dict], key: str, target: float, lower_is_better: bool
                   ) -> Optional[int]:
    for record in curve:
        value = record[key]
        if (value <= target) if lower_is_better else (value >= target):
            return record["step"]
    return None


def step_ratios(results: dict[str, list[dict]]) -> dict[str, dict]:
    """For each score: the first step at which RF reaches DDPM's final value and the ratio
    DDPM's steps / that step (the paper's 2.5x); the converse; and, since one final score is a
    noisy target, the same against DDPM's best score (ratio: the step of that best / RF's)."""
    out = {}
    if not all(o in results and results[o] for o in OBJECTIVES):
        return out
    for key, lower in (("fd", True), ("accuracy", False)):
        entry = {}
        for fast, slow in (("rf", "ddpm"), ("ddpm", "rf")):
            target = results[slow][-1][key]
            final_step = results[slow][-1]["step"]
            reached = first_reaching(results[fast], key, target, lower)
            entry[f"{fast}_reaches_{slow}_final"] = {
                "target": target, f"{slow}_step": final_step, "at_step": reached,
                "ratio": None if reached is None else final_step / reached}
        pick = min if lower else max
        best = pick(results["ddpm"], key=lambda r: r[key])
        reached = first_reaching(results["rf"], key, best[key], lower)
        entry["rf_reaches_ddpm_best"] = {
            "target": best[key], "ddpm_step": best["step"], "at_step": reached,
            "ratio": None if reached is None else best["step"] / reached}
        out[key] = entry
    return out


def ratio_sentence(ratios: dict, key: str, label: str) -> str:
    if key not in ratios:
        return f"{label}: needs both objectives."
    rf = ratios[key]["rf_reaches_ddpm_final"]
    ddpm = ratios[key]["ddpm_reaches_rf_final"]
    best = ratios[key].get("rf_reaches_ddpm_best")
    fmt = "{:.3f}" if key == "fd" else "{:.1%}"
    parts = []
    if rf["at_step"] is not None:
        parts.append(f"RF first reaches DDPM's final {label} ({fmt.format(rf['target'])}) at "
                     f"step {rf['at_step']}: a step ratio of {rf['ratio']:.2f}x")
    else:
        parts.append(f"RF does not reach DDPM's final {label} ({fmt.format(rf['target'])}) "
                     "within the budget")
    if best is not None and best["ddpm_step"] != rf["ddpm_step"]:
        if best["at_step"] is not None:
            parts.append(f"RF reaches DDPM's best ({fmt.format(best['target'])}, at its step "
                         f"{best['ddpm_step']}) at step {best['at_step']} "
                         f"({best['ratio']:.2f}x)")
        else:
            parts.append(f"RF does not reach DDPM's best ({fmt.format(best['target'])}, at "
                         f"its step {best['ddpm_step']})")
    if ddpm["at_step"] is not None:
        parts.append(f"DDPM first reaches RF's final ({fmt.format(ddpm['target'])}) at step "
                     f"{ddpm['at_step']} ({ddpm['ratio']:.2f}x)")
    else:
        parts.append(f"DDPM does not reach RF's final ({fmt.format(ddpm['target'])})")
    return "; ".join(parts) + "."


def markdown_table(results: dict[str, list[dict]], floor: float) -> str:
    steps = sorted({r["step"] for rs in results.values() for r in rs})
    by = {(r["objective"], r["step"]): r for rs in results.values() for r in rs}
    objectives = [o for o in OBJECTIVES if o in results]
    head = "| step | " + " | ".join(f"{o.upper()} fd_shapes | {o.upper()} cond. acc."
                                     for o in objectives) + " |"
    sep = "|---:|" + "---:|---:|" * len(objectives)
    lines = [head, sep]
    for step in steps:
        cells = []
        for o in objectives:
            r = by.get((o, step))
            cells += [f"{r['fd']:.3f}", f"{r['accuracy']:.1%}"] if r else ["", ""]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append(f"\nReal-vs-real floor of fd_shapes at this sample size: {floor:.3f}.")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], floor: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    colours = {"rf": "tab:blue", "ddpm": "tab:red"}
    for objective, records in results.items():
        steps = [r["step"] for r in records]
        label = {"rf": "rectified flow", "ddpm": "DDPM (eps)"}[objective]
        axes[0].plot(steps, [r["fd"] for r in records], "o-", color=colours[objective],
                     label=label)
        axes[1].plot(steps, [r["accuracy"] for r in records], "o-", color=colours[objective],
                     label=label)
    axes[0].axhline(floor, color="grey", linestyle=":", label="real vs real (floor)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("fd_shapes (classifier features; not FID)")
    axes[1].set_ylabel("conditional accuracy (colour and shape)")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("RF vs DDPM, same model, data, optimizer and budget")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_ablation(cfg: AblationConfig, out: Path, say: Callable[[str], None] = print) -> dict:
    """Train and score every objective; write results.json, table.md, plot.png, sample grids.
    Returns the results dict."""
    cfg.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    width = encoder_width(cfg.text_encoder)
    if width != cfg.model.text_dim:
        cfg = replace(cfg, model=replace(cfg.model, text_dim=width))
    encoder = TextEncoder(cfg.text_encoder, 16, cfg.device)
    ref = build_reference(cfg, say)
    say(f"reference ready ({time.perf_counter() - start:.0f} s); real-vs-real fd floor "
        f"{ref.floor:.3f}")
    progress = Progress(cfg, say)
    results: dict[str, list[dict]] = {}
    for objective in cfg.objectives:
        results[objective] = train_objective(objective, cfg, encoder, ref, progress, out, say)
    wall = time.perf_counter() - start
    summary = {
        "config": {**asdict(cfg), "model": asdict(cfg.model), "flow": asdict(cfg.flow)},
        "parameters": sum(p.numel() for p in build_model(cfg.model, "meta").parameters()),
        "fd_floor": ref.floor, "results": results,
        "wall_seconds": round(wall, 1), "threads": torch.get_num_threads(),
        "metric_note": "fd_shapes: Fréchet distance in the in-repo shapes classifier's "
                       "features (megagoku/evaluation/classifier.py); not FID.",
    }
    for line in write_report(summary, out):
        say(line)
    say(f"wall time {wall / 60:.1f} min on {torch.get_num_threads()} thread(s); "
        f"written to {out}/ (results.json, table.md, plot.png, samples_*.png)")
    return summary


def write_report(summary: dict, out: Path) -> list[str]:
    """Step ratios into `summary`, then results.json, table.md and plot.png; returns the
    printed lines (the table, the ratio sentences)."""
    results = summary["results"]
    summary["step_ratios"] = ratios = step_ratios(results)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    table = markdown_table(results, summary["fd_floor"])
    sentences = [ratio_sentence(ratios, "fd", "fd_shapes"),
                 ratio_sentence(ratios, "accuracy", "conditional accuracy")]
    (out / "table.md").write_text(table + "\n\n" + "\n\n".join(sentences) + "\n")
    plot(results, summary["fd_floor"], out / "plot.png")
    return ["", table, *sentences]
