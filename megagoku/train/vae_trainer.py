"""Training the 3D causal VAE (`megagoku train-vae`): pixels -> (reconstruction, KL) -> L1 + KL,
optionally a PatchGAN hinge term -> AdamW, on one process (the GPU when present, else the CPU).

The data path is the Transformer's: the shapes generator or the files of a manifest, read in
stream order (index 0, 1, 2, ...); an unreadable file gives None, is skipped and counted
(`data_skipped`). A step reads the next `batch_size` readable samples; samples of different
shapes (one-frame images, clips, resolution tiers) go through the VAE as separate passes in the
same step and the loss is their pixel-weighted mean, so every pixel weighs the same.

Loss = l1_weight * L1(reconstruction, x) + mse_weight * MSE(reconstruction, x) + kl_weight * KL
(defaults: L1 only), each pixel's error weighted by `pixel_weights` (the foreground
`foreground_weight_at(step)` times a background pixel's: `train.foreground_weight`, annealed to
`train.foreground_weight_end`), the error that of the clamped output when `train.clamped_loss`
(`clamped_error`), and from step `adversarial_start`, when
`adversarial_weight` > 0, adversarial_weight * -D(reconstruction).mean() with a small 3D PatchGAN
D (`models/vae_discriminator.py`) trained alongside with the hinge loss. The weight is fixed: the
adaptive weight of VQGAN (the ratio of the two terms' gradient norms at the decoder's last layer)
needs two extra backward passes per shape group, which this small setting does not justify.

No perceptual (LPIPS) term: it needs pretrained VGG/AlexNet weights, and nothing may be
downloaded here (the machines are offline). L1 + KL (+ GAN) is what trains. On sparse content,
such as the shapes on black, L1 alone settles on the per-pixel median, the background, for a long
time (measured with the first configs/vae/tiny.yaml: docs/architecture.md); perceptual and
adversarial terms are the usual remedy (not measured here). Diagnosis there: the tiny VAE
overfits one fixed sample with MSE (foreground MSE 2.03 -> 0.015 in 125 steps) but not with L1
(~1.9 after 200 steps); on the stream, MSE alone gets the foreground MSE from the background-only
1.296 to 0.964 in 600 steps (L1 0.110, above the background-only 0.053): better, not yet a usable
shapes VAE (the recipes now weight the foreground: configs/vae/shapes64.yaml).

Foreground quality: `eval_fg_mse` is the MSE on the probe pixels that differ from their sample's
background (per-channel median) by more than 0.1 in some channel (`foreground_mask`), logged with
`eval_l1` and the scores of the baseline that outputs the background everywhere
(`eval_background_l1`, `eval_background_fg_mse`): a VAE that only learnt the background scores
about those.

Outputs in the run dir: metrics.jsonl and tensorboard/ (`MetricsLogger`), and `vae/`, the folder
`latent.kind: causal_vae, latent.path: <run_dir>/vae` loads. It is written at the end (and every
`save_every` steps) with the per-channel mean/std of the posterior mean over the first
`stats_samples` samples of the stream (the latent space normalises with them), into a temporary
folder renamed into place, so a crash never leaves a half-written VAE. The same probe samples
give the reconstruction errors before training and at every save (`eval_l1`, `eval_fg_mse`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megagoku.config import ConfigError, VAETrainingConfig, to_dict
from megagoku.config.loader import config_from_dict
from megagoku.config.schema import VAE_SPATIAL_COMPRESSION, VAE_TEMPORAL_COMPRESSION
from megagoku.data import ManifestError, ShapesDataset
from megagoku.data.files import ManifestDataset
from megagoku.data.packing import ConsecutiveSkips
from megagoku.models.vae import CausalVAE
from megagoku.models.vae_discriminator import (PatchDiscriminator3D, hinge_discriminator_loss,
                                               hinge_generator_loss)
from megagoku.optim import Update, adamw, warmup_cosine
from megagoku.parallel import resolve_device
from megagoku.train.components.rng import seed_everything
from megagoku.train.metrics import MetricsLogger
from megagoku.train.run_dir import RUN_OUTPUTS, prepare_run_dir
from megagoku.train.run_lock import RunLock
from megagoku.train.step import autocast
from megagoku.train.vae_eval import (ReconstructionFigures, evaluate_reconstructions,
                                     foreground_mask, held_out_clips)

log = logging.getLogger(__name__)

VAE_FOLDER = "vae"  # <run_dir>/vae: what latent.path names
PICTURE = "reconstructions.png"  # <run_dir>/: held-out originals over their reconstructions
FIGURES = "reconstruction.json"  # <run_dir>/: the final figures (`ReconstructionFigures`)


@dataclass
class VAETrainResult:
    run_dir: Path
    vae_dir: Path
    steps: int
    l1_start: float  # reconstruction L1 (posterior mean) on the probe samples before training
    l1_end: float  # the same after the last step
    data_skipped: int
    fg_mse_start: float = math.nan  # foreground MSE (`measure`) before training
    fg_mse_end: float = math.nan  # the same after the last step
    background_l1: float = math.nan  # the scores of outputting each sample's background
    background_fg_mse: float = math.nan
    final: Optional[ReconstructionFigures] = None  # held-out figures (train.eval_clips > 0)


class SampleStream:
    """The dataset read in order from index `start`: `take(n)` gives the next n readable samples'
    pixels; indices whose sample is None (an unreadable file) are skipped and counted."""

    def __init__(self, dataset, start: int = 0):
        self.dataset = dataset
        self.next_index = start
        self.skipped = 0

    def take(self, count: int) -> list[torch.Tensor]:
        pixels: list[torch.Tensor] = []
        skips = ConsecutiveSkips()  # the same limit as the Transformer's loader
        while len(pixels) < count:
            sample = self.dataset[self.next_index]
            self.next_index += 1
            if sample is not None:
                pixels.append(sample.pixels)
                skips.read()
                continue
            self.skipped += 1
            skips.skipped(self.next_index - 1)
        return pixels


def group_by_shape(videos: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stack same-shaped (3, T, H, W) samples into (B, 3, T, H, W) batches, in first-seen order:
    one VAE pass per shape (images and clips cannot share a tensor)."""
    groups: dict[tuple[int, ...], list[torch.Tensor]] = defaultdict(list)
    for video in videos:
        groups[tuple(video.shape)].append(video)
    return [torch.stack(group) for group in groups.values()]


def build_vae_dataset(config: VAETrainingConfig, source: str,
                      device: torch.device) -> ShapesDataset | ManifestDataset:
    """The pixel source of `data.kind`; a problem becomes a ConfigError naming `source`."""
    try:
        if config.data.kind == "manifest":
            return ManifestDataset(config.data, device.type)
        return ShapesDataset(config.data)
    except ManifestError as e:
        raise ConfigError(f"{source}: data.manifest: {e}") from None
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None


def prepare_vae_run_dir(run_dir: Path, overwrite: bool) -> None:
    """As the Transformer's `prepare_run_dir`, with the `vae/` folder (and a temporary one a crash
    may have left) counted among the outputs of a run."""
    ours = (VAE_FOLDER, f".{VAE_FOLDER}.tmp", f".{VAE_FOLDER}.old", PICTURE, FIGURES)
    used = [name for name in (*RUN_OUTPUTS, *ours) if (run_dir / name).exists()]
    if used and not overwrite:
        raise ConfigError(f"{run_dir}: run dir already holds {', '.join(used)}; pass --overwrite "
                          "to replace them or choose another --run-dir")
    prepare_run_dir(run_dir, overwrite=True)  # clears metrics.jsonl, tensorboard, checkpoints
    for name in ours:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@dataclass
class ProbeMeasurement:
    """`measure` over the probe samples. `l1` is pixel-weighted over all samples, `fg_mse` the
    MSE (over the 3 channels) of the foreground pixels (`foreground_mask`) over all samples;
    the `background_*` pair is the same for the baseline that outputs each sample's background
    everywhere (all black on the shapes): a VAE that only learnt the background scores about
    that. `latents_mean`/`latents_std`: per channel, of the posterior mean."""

    l1: float
    fg_mse: float
    background_l1: float
    background_fg_mse: float
    latents_mean: list[float]
    latents_std: list[float]


@torch.no_grad()
def measure(vae: CausalVAE, probe: list[torch.Tensor], batch_size: int,
            device: torch.device) -> ProbeMeasurement:
    """Deterministic pass over the probe samples: the reconstruction errors of the posterior
    mean (decoded and clamped to [-1, 1]) and the per-channel mean and std of that posterior
    mean (over every latent position), which the latent space normalises with."""
    was_training = vae.training
    vae.eval()
    sums = defaultdict(float)
    pixels = fg_pixels = 0
    channels = vae.config.latent_channels
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    positions = 0
    for batch in group_by_shape(probe):
        for chunk in batch.split(batch_size):  # at most a training step's worth at once
            x = chunk.to(device)
            mean, _ = vae.encode(x)
            # Clamped, as the latent space and the final figures use it (`train.clamped_loss`
            # trains the decoder to keep black below -1, which only clamping makes exact).
            error = vae.decode(mean).clamp(-1.0, 1.0) - x
            background, mask = foreground_mask(x)
            baseline = background - x
            mask = mask.expand_as(x)
            sums["l1"] += float(error.abs().sum())
            sums["background_l1"] += float(baseline.abs().sum())
            sums["fg_se"] += float(error[mask].pow(2).sum())
            sums["background_fg_se"] += float(baseline[mask].pow(2).sum())
            pixels += x.numel()
            fg_pixels += int(mask.sum())
            flat = mean.transpose(0, 1).reshape(channels, -1).double().cpu()
            total += flat.sum(dim=1)
            total_sq += flat.pow(2).sum(dim=1)
            positions += flat.shape[1]
    vae.train(was_training)
    channel_mean = total / positions
    variance = (total_sq / positions - channel_mean.pow(2)).clamp(min=0.0)
    # A dead channel (constant latent) would divide by zero in the latent space: floor its std.
    channel_std = variance.sqrt().clamp(min=1e-6)
    fg = max(fg_pixels, 1)  # no foreground at all (blank probe): 0, not a division by zero
    return ProbeMeasurement(sums["l1"] / pixels, sums["fg_se"] / fg, sums["background_l1"] / pixels,
                            sums["background_fg_se"] / fg, channel_mean.tolist(),
                            channel_std.tolist())


def pixel_weights(x: torch.Tensor, foreground_weight: float) -> Optional[torch.Tensor]:
    """Per-pixel loss weights (B, 1, T, H, W): `foreground_weight` on the foreground
    (`foreground_mask`), 1 elsewhere, scaled to mean 1 over the batch; None when uniform.

    Why: on sparse content the background dominates any per-pixel mean, and the foreground's
    share of the gradient is its share of the pixels (7% for the shapes)."""
    if foreground_weight == 1:
        return None
    _, mask = foreground_mask(x)
    weight = 1.0 + (foreground_weight - 1.0) * mask.to(x.dtype)
    return weight / weight.mean()


def foreground_weight_at(tcfg, step: int) -> float:
    """The foreground weight of training step `step` (1-based): `foreground_weight` up to step
    `foreground_anneal_start`, then linear to `foreground_weight_end` at the last step (constant
    when that is None)."""
    if tcfg.foreground_weight_end is None:
        return tcfg.foreground_weight
    start = tcfg.foreground_anneal_start
    progress = min(1.0, max(0.0, (step - start) / max(1, tcfg.steps - start)))
    return tcfg.foreground_weight + (tcfg.foreground_weight_end - tcfg.foreground_weight) * progress


def clamped_error(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """reconstruction - x, except 0 where the output is beyond the bound of [-1, 1] its target
    sits at: there the clamped output, which the latent space and the figures use, is exact.

    Why: the shapes' pixels sit at -1 or 1 in every channel but the anti-aliased edges (black is
    -1). Plain MSE pulls a background output back up to -1 from below, so the decoder hovers
    at -1 with a haze of both signs that clamping halves at best; counted as used, any output
    below -1 is exact there and the decoder can keep a margin. Where the target is inside the
    range, or the output overshoots the other way, the raw error is kept (never smaller than the
    clamped one): the gradient never vanishes as a plain clamp's would."""
    error = reconstruction - x
    exact = ((reconstruction < -1) & (x <= -1)) | ((reconstruction > 1) & (x >= 1))
    return error.masked_fill(exact, 0.0)


def save_vae_atomically(vae: CausalVAE, run_dir: Path, latents_mean: list[float],
                        latents_std: list[float]) -> Path:
    """Write `<run_dir>/vae` via a temporary folder and renames: at every moment `vae/` is either
    the previous complete save, absent, or the new complete one."""
    final = run_dir / VAE_FOLDER
    temporary, previous = run_dir / f".{VAE_FOLDER}.tmp", run_dir / f".{VAE_FOLDER}.old"
    for leftover in (temporary, previous):
        if leftover.exists():
            shutil.rmtree(leftover)
    vae.save(temporary, latents_mean, latents_std)
    if final.exists():
        final.rename(previous)
    temporary.rename(final)
    if previous.exists():
        shutil.rmtree(previous)
    return final


class StepWindow:
    """Sums of the steps since the last logged one; `scalars()` gives their means and rates."""

    def __init__(self):
        self.start = time.perf_counter()
        self.steps = 0
        self.samples = 0
        self.latent_positions = 0
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, float], samples: int, latent_positions: int) -> None:
        self.steps += 1
        self.samples += samples
        self.latent_positions += latent_positions
        for key, value in values.items():
            self.sums[key] += value
            self.counts[key] += 1

    def scalars(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.start
        means = {key: self.sums[key] / self.counts[key] for key in self.sums}
        return {**means, "samples_per_s": self.samples / seconds,
                "steps_per_s": self.steps / seconds,
                "latent_tokens_per_s": self.latent_positions / seconds}


def train_vae(config: VAETrainingConfig, run_dir: str | Path, source: str = "<config>",
              overwrite: bool = False) -> VAETrainResult:
    tcfg = config.train
    run_dir = Path(run_dir)
    # A config built in code has not been through the loader: check it the same way, before work.
    config_from_dict(VAETrainingConfig, to_dict(config), source)
    device = resolve_device("auto")
    dataset = build_vae_dataset(config, source, device)
    with RunLock(run_dir):  # one owner per run dir (train/run_lock.py), as the Transformer's
        return _train_vae_in(config, run_dir, dataset, device, overwrite)


def _train_vae_in(config: VAETrainingConfig, run_dir: Path, dataset, device: torch.device,
                  overwrite: bool) -> VAETrainResult:
    tcfg = config.train
    prepare_vae_run_dir(run_dir, overwrite)
    generator = seed_everything(tcfg.seed)  # also torch.manual_seed: the same initial weights

    # Channels-last activations: oneDNN's and cuDNN's 3D convolutions take them without
    # reordering (a step at 64x64x17 on this CPU: 0.43 -> 0.39 s); the saved weights are
    # made contiguous.
    vae = CausalVAE(config.vae).to(device, memory_format=torch.channels_last_3d)
    adversarial = tcfg.adversarial_weight > 0
    discriminator = PatchDiscriminator3D().to(device) if adversarial else None
    # The project's update (optim.Update, one process): clipping (grad_clip 0: none, the norm
    # is still logged), AdamW, no update on a non-finite gradient norm; warm-up + cosine LR
    # (train.warmup_steps, min_lr_ratio; constant by default), no EMA.
    optimizer = adamw(vae.parameters(), lr=tcfg.lr, betas=tcfg.betas,
                      weight_decay=tcfg.weight_decay)
    schedule = warmup_cosine(tcfg.warmup_steps, tcfg.steps, tcfg.min_lr_ratio)
    update = Update(vae, optimizer, tcfg.grad_clip, schedule, use_deepspeed=False)
    disc_update = Update(discriminator, adamw(
        discriminator.parameters(), lr=tcfg.lr, betas=tcfg.betas,
        weight_decay=tcfg.weight_decay), 0.0, schedule, use_deepspeed=False) \
        if adversarial else None
    # The probe: the stream's first samples, read by their own stream so that training reads
    # the same samples whatever stats_samples is.
    probe_stream = SampleStream(dataset)
    probe = probe_stream.take(tcfg.stats_samples)
    train_stream = SampleStream(dataset)
    start = measure(vae, probe, tcfg.batch_size, device)
    metrics = MetricsLogger(run_dir, tcfg.steps)
    n_params = sum(p.numel() for p in vae.parameters())
    log.info("VAE: %.2fM parameters on %s%s, %s; run dir %s", n_params / 1e6, device,
             " + PatchGAN discriminator" if adversarial else "", tcfg.precision, run_dir)
    if tcfg.precision == "bf16" and device.type == "cpu" and \
            not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("train.precision bf16: this CPU has no bf16 instructions (AVX-512 BF16 or "
                    "AMX); oneDNN emulates them, slower than fp32")
    log.info("probe: recon L1 %.4f, foreground MSE %.4f before training; outputting the "
             "background everywhere scores L1 %.4f, foreground MSE %.4f", start.l1,
             start.fg_mse, start.background_l1, start.background_fg_mse)

    def save() -> ProbeMeasurement:
        result = measure(vae, probe, tcfg.batch_size, device)
        save_vae_atomically(vae, run_dir, result.latents_mean, result.latents_std)
        return result

    def data_skipped() -> int:  # unreadable reads, the probe's included
        return train_stream.skipped + probe_stream.skipped

    window = StepWindow()
    end = start
    vae.train()
    for step in range(1, tcfg.steps + 1):
        batches = group_by_shape(train_stream.take(tcfg.batch_size))
        total_pixels = sum(b.numel() for b in batches)
        adversarial_now = adversarial and step >= tcfg.adversarial_start
        foreground_weight = foreground_weight_at(tcfg, step)
        values: dict[str, float] = defaultdict(float)

        if discriminator is not None:  # the VAE's pass must not leave gradients in D
            discriminator.requires_grad_(False)
        reconstructions = []
        latent_positions = 0
        for i, batch in enumerate(batches):
            x = batch.to(device)
            share = x.numel() / total_pixels  # pixel weighting across the shape groups
            with autocast(tcfg.precision, device):
                reconstruction, kl = vae(x, generator)
            reconstruction, kl = reconstruction.float(), kl.float()
            error = clamped_error(reconstruction, x) if tcfg.clamped_loss else reconstruction - x
            weight = pixel_weights(x, foreground_weight)
            l1, mse = error.abs().mean(), error.pow(2).mean()  # logged unweighted
            if weight is not None:
                loss = tcfg.l1_weight * (weight * error.abs()).mean() + \
                    tcfg.mse_weight * (weight * error.pow(2)).mean()
            else:
                loss = tcfg.l1_weight * l1 + tcfg.mse_weight * mse
            loss = loss + tcfg.kl_weight * kl
            if adversarial_now:
                adv_g = hinge_generator_loss(discriminator(reconstruction))
                loss = loss + tcfg.adversarial_weight * adv_g
                values["adv_g"] += share * adv_g.item()
                reconstructions.append(reconstruction.detach())
            # Backward per group: each group's graph is freed before the next forward.
            update.backward(share * loss, accumulate=i > 0)
            values["loss"] += share * loss.item()
            values["l1"] += share * l1.item()
            values["mse"] += share * mse.item()
            values["kl"] += share * kl.item()
            t, h, w = x.shape[2:]
            latent_positions += x.shape[0] * (1 + (t - 1) // VAE_TEMPORAL_COMPRESSION) * \
                (h // VAE_SPATIAL_COMPRESSION) * (w // VAE_SPATIAL_COMPRESSION)
        step_lr = update.lr
        grad_norm = update.step()

        if adversarial_now:
            discriminator.requires_grad_(True)
            for i, (batch, reconstruction) in enumerate(zip(batches, reconstructions)):
                x = batch.to(device)
                share = x.numel() / total_pixels
                adv_d = hinge_discriminator_loss(discriminator(x), discriminator(reconstruction))
                disc_update.backward(share * adv_d, accumulate=i > 0)
                values["adv_d"] += share * adv_d.item()
            disc_update.step()
            disc_update.finish()  # D's schedule counts its own steps
        update.finish()

        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"VAE loss became {values['loss']} at step {step}")
        values["grad_norm"] = grad_norm
        values["foreground_weight"] = foreground_weight
        window.add(values, sum(b.shape[0] for b in batches), latent_positions)

        last = step == tcfg.steps
        extra = {}
        if last or (tcfg.save_every and step % tcfg.save_every == 0):
            end = save()
            extra.update(eval_l1=end.l1, eval_fg_mse=end.fg_mse,
                         eval_background_l1=end.background_l1,
                         eval_background_fg_mse=end.background_fg_mse)
        if last or step % tcfg.log_every == 0:
            scalars = {**window.scalars(), "lr": step_lr,
                       "data_skipped": data_skipped(), **extra}
            metrics.log(step, scalars)
            # The progress line's "tok/s" are latent positions: the Transformer's tokens at a
            # 1x1x1 patch, the unit its data rates are counted in.
            metrics.progress(step, scalars["loss"], scalars["steps_per_s"],
                             scalars["latent_tokens_per_s"])
            window = StepWindow()
        elif extra:
            metrics.log(step, extra)
    metrics.close()
    vae_dir = run_dir / VAE_FOLDER
    log.info("on %d probe samples after %d steps: recon L1 %.4f -> %.4f (background only: %.4f),"
             " foreground MSE %.4f -> %.4f (background only: %.4f); VAE: %s", len(probe),
             tcfg.steps, start.l1, end.l1, end.background_l1, start.fg_mse, end.fg_mse,
             end.background_fg_mse, vae_dir)
    final = final_figures(vae, config, probe, run_dir, device)
    return VAETrainResult(run_dir, vae_dir, tcfg.steps, start.l1, end.l1, data_skipped(),
                          start.fg_mse, end.fg_mse, end.background_l1, end.background_fg_mse,
                          final)


def final_figures(vae: CausalVAE, config: VAETrainingConfig, probe: list[torch.Tensor],
                  run_dir: Path, device: torch.device) -> Optional[ReconstructionFigures]:
    """The reconstruction figures and picture (`train/vae_eval.py`) on `train.eval_clips`
    held-out clips of the shapes; a manifest has no held-out set here, so its figures are on the
    probe's clips, which training read (said in the log)."""
    tcfg = config.train
    if tcfg.eval_clips == 0:
        return None
    shapes = config.data.kind == "shapes"
    if shapes:
        clips = held_out_clips(config.data, tcfg.eval_clips)
    else:
        clips = [p for p in probe if p.shape[1] > 1]
        shape = clips[0].shape if clips else None
        clips = [c for c in clips if c.shape == shape][:tcfg.eval_clips]
        if not clips:
            log.info("no clip among the probe samples: no reconstruction figures")
            return None
        log.info("reconstruction figures on %d probe clips (read in training: a manifest has no "
                 "held-out set here)", len(clips))
    figures = evaluate_reconstructions(vae, clips, tcfg.batch_size, device, run_dir / PICTURE,
                                       describe=shapes)
    (run_dir / FIGURES).write_text(json.dumps(figures.as_dict(), indent=1) + "\n")
    log.info("%s; picture %s", figures.summary(), figures.picture)
    return figures
