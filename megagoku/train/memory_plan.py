"""Per-GPU memory of a training layout, before booking the cluster; and the measurements that
keep the plan honest.

Bytes per parameter, as this trainer keeps them (fp32 weights; bf16 autocast makes transient
copies): weights 4, gradients 4, AdamW moments 8; under ZeRO 1-3 DeepSpeed also keeps an fp32
master partition (4). (ZeRO-3 means to update an fp32 weight partition in place, but its test
compares a torch.device with a device-name string, never equal: it copies the partition, as
measured at full width.) ZeRO-1 shards master + moments over the gradient group (DP x Ulysses),
ZeRO-2 also the gradients, ZeRO-3 also the weights. Tensor-parallel weights (megatron's `tensor_model_parallel`)
are split over TP; the rest is replicated.

Activations kept for backward, per token of the rank's Ulysses slice and per block, in elements
(d = hidden size, f = MLP width), counted from the block's code with flash attention:
  inside the TP regions (split over TP): QK-norm inputs 2d, attention q k v out 4d, cross-attention
      query norm, q, out 3d, MLP hidden and its GELU 2f  ->  9d + 2f
  outside (split over TP only under megatron SP): adaLN modulation 6d, norm / modulate / residual
      gates 12d  ->  18d
A checkpointed part keeps only its input: `attention` drops the 9d of attention internals, `mlp`
the 2f, `full` keeps the block input (d) plus, during backward, one block's recomputation.
Around that steady state (what a step keeps), the plan counts what makes the peak:
- the EMA, sharded as the weights are (its TP piece; under ZeRO-3 its partition): 4 bytes;
- the start-up peak: the model is built with this rank's pieces only (models/construct.py), each
  initial value computed whole, one logical tensor at a time; then DeepSpeed flattens the weights
  into its buffers (ZeRO-1/2: the TP piece is copied once, plus the fp32 master partition;
  ZeRO-3: the partitions, plus their fp32 copy);
- the optimizer's working memory during the step: the trainers' AdamW is torch's fused one
  (`optim/adamw.py`), which allocates nothing of a parameter's size (the foreach one it replaced
  made a temporary the size of the optimizer's partition: measured, BENCHMARKS.md "Full width");
  under ZeRO-1/2 the fp32 gradient partition DeepSpeed builds for it; under ZeRO-3 the gradient
  partition handed to the optimizer plus the gradient norm, which DeepSpeed takes in float64
  over the whole flat partition (8 bytes per element) and frees before the update;
- DeepSpeed's buckets under ZeRO (`parallel.zero_bucket_elements`, B elements; DeepSpeed's own
  defaults would be 2-4 GB in fp32): the gradient bucket, 4 bytes per element (allocated whole
  on a GPU; on the CPU resident as far as gradients fill it: min(B, the rank's parameters)),
  and under ZeRO-3 the gathered parameters it keeps live or
  prefetched during forward and backward (at most B, plus the module being computed: the
  largest tensor). Without ZeRO, the gradients flattened for the all-reduce after backward are
  one transient copy: the optimizer step's working memory above;
- the checkpoint snapshot: this rank's share of the logical tensors (weights, EMA, two moments:
  16 bytes per parameter, spread evenly over the ranks) copied to host memory for the background
  writer, plus the largest logical tensor gathered whole (twice: the pieces and their
  concatenation) while the snapshot is taken. The host copies are kept from one save to the next
  (`Checkpointer.to_host`): on a CPU run they are part of every step's memory after the first
  save; on a GPU they are pinned host memory, outside the device's plan;
- rank 0's copies of the whole model for samples and evaluations during training
  (`inference/periodic.py`: one per sampler and evaluator, built at the first one and kept; 4
  bytes per parameter of the whole model), in rank 0's peak, which is the plan's peak;
- the allocator's fragmentation allowance, a fraction of the peak (`fragmentation`; on the CPU
  freed tensors above 1 MB go back to the OS: train/host_allocator.py).
`peak_bytes` is the larger of the start-up and training peaks, with that allowance;
`steady_bytes` what a step keeps. This is an estimate (the CUDA context and the collectives'
own buffers are not in it); `megagoku bench memory` holds it against measured runs
(BENCHMARKS.md, "Full width").
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass

import torch

from megagoku.config import ConfigError, ModelConfig, TrainingConfig
from megagoku.config.schema import ZERO_BUCKET_ELEMENTS

GIB = 1024 ** 3


@dataclass
class MemoryPlan:
    gpus: int
    tensor_parallel: int
    ulysses: int
    data_parallel: int
    zero_stage: int
    seq_len: int
    checkpointing: str
    params_per_gpu: int
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    ema_bytes: int = 0
    startup_peak_bytes: int = 0  # building the model and DeepSpeed's buffers
    optimizer_working_bytes: int = 0  # during the optimizer step
    snapshot_bytes: int = 0  # host copies of this rank's share of a checkpoint
    snapshot_gather_bytes: int = 0  # one logical tensor gathered whole, while snapshotting
    bucket_bytes: int = 0  # DeepSpeed's gradient bucket, kept once filled
    gathered_bytes: int = 0  # ZeRO-3: parameters gathered during forward and backward
    rank0_copies_bytes: int = 0  # rank 0: whole copies of the model for samples / evaluations
    fragmentation: float = 0.10
    device: str = "cuda"  # "cpu": the snapshot's host copies are in the device's memory

    @property
    def total_bytes(self) -> int:
        """The steady state without the EMA (what the plan counted before it had one)."""
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes

    @property
    def steady_bytes(self) -> int:
        """What a training step keeps: weights, gradients, optimizer state, EMA, activations."""
        return self.total_bytes + self.ema_bytes

    @property
    def training_peak_bytes(self) -> int:
        """The steady state with DeepSpeed's bucket and (on the CPU, after the first save) the
        snapshot's host copies, plus the activations with ZeRO-3's gathered parameters, the
        optimizer step's working memory or a snapshot's gather, whichever is largest (they do
        not meet: the activations are freed by the step, a save starts after it)."""
        host = self.snapshot_bytes if self.device == "cpu" else 0
        return self.steady_bytes - self.activations_bytes + self.bucket_bytes + host + \
            self.rank0_copies_bytes + max(
            self.activations_bytes + self.gathered_bytes, self.optimizer_working_bytes,
            self.snapshot_gather_bytes)

    @property
    def peak_bytes(self) -> int:
        """The larger of the start-up and training peaks, with the fragmentation allowance."""
        return int(max(self.startup_peak_bytes, self.training_peak_bytes)
                   * (1 + self.fragmentation))

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("total_bytes", "steady_bytes", "training_peak_bytes", "peak_bytes"):
            out[name] = getattr(self, name)
        out["gib"] = {k.removesuffix("_bytes"): round(v / GIB, 2) for k, v in out.items()
                      if k.endswith("_bytes")}
        return out


def split_parameter_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters split over TP, parameters replicated), from the meta-device model."""
    from megagoku.models import build_model
    from megagoku.parallel import ensure_single_process_groups

    ensure_single_process_groups()
    model = build_model(cfg, device="meta")
    split = sum(p.numel() for p in model.parameters() if getattr(p, "tensor_model_parallel", False))
    return split, sum(p.numel() for p in model.parameters()) - split


def largest_tensor_numel(cfg: ModelConfig) -> int:
    """Elements of the model's largest logical tensor (the blocks are alike: depth 1 is
    enough)."""
    from megagoku.models import build_model
    from megagoku.parallel import ensure_single_process_groups

    ensure_single_process_groups()
    model = build_model(dataclasses.replace(cfg, depth=1), device="meta")
    return max(p.numel() for p in model.parameters())


def transient_bytes(local: int, shards: int, zero_stage: int, total: int, world: int,
                    largest: int, bucket: int = ZERO_BUCKET_ELEMENTS,
                    device: str = "cuda") -> dict[str, float]:
    """Start-up, optimizer-step, DeepSpeed bucket and snapshot memory per device beyond the
    steady state, for `local` parameters per TP rank, `total` in the model, `world` ranks and
    `bucket` elements per DeepSpeed bucket (see the module doc)."""
    weights, _, _ = state_bytes(local, shards, zero_stage)
    ema = weights  # sharded as the weights are
    in_optimizer = local / shards if zero_stage >= 1 else local  # the optimizer's partition
    flatten = {0: 0, 1: 4 * local + 4 * in_optimizer, 2: 4 * local + 4 * in_optimizer,
               3: 8 * in_optimizer}[zero_stage]
    return {
        "ema": ema,
        "startup_peak": weights + ema + max(4 * largest, flatten),
        # ZeRO-0: the gradients flattened for the all-reduce; ZeRO-1/2: the fp32 gradient
        # partition; ZeRO-3: the gradient partition handed to the optimizer, and its norm taken
        # in float64 over the whole flat partition (8 bytes per element). The fused AdamW adds
        # no temporary (the foreach one added 4 bytes per element of the partition).
        "optimizer_working": 4 * in_optimizer * {0: 1, 1: 1, 2: 1, 3: 3}[zero_stage],
        "snapshot": 16 * total / world,
        "snapshot_gather": 8 * largest,
        # DeepSpeed allocates the bucket whole (a GPU's allocator counts all of it); host pages
        # become resident only as gradients fill them
        "bucket": 4 * (bucket if device == "cuda" else min(bucket, local)) if zero_stage else 0,
        "gathered": 4 * (min(bucket, local) + largest) if zero_stage == 3 else 0,
    }


def state_bytes(local: int, shards: int, zero_stage: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per device for `local` parameters per TP rank,
    ZeRO-sharded over `shards` ranks (see the module doc)."""
    weights = 4 * local / (shards if zero_stage >= 3 else 1)
    grads = 4 * local / (shards if zero_stage >= 2 else 1)
    optimizer = 8 * local if zero_stage == 0 else 12 * local / shards
    return weights, grads, optimizer


def local_parameter_count(cfg: ModelConfig) -> int:
    """This TP rank's parameters, from meta-device models of depth 1 and 2 (the blocks are
    alike): building a 100000-block model on the meta device alone takes minutes."""
    from megagoku.models import build_model

    def count(depth: int) -> int:
        model = build_model(dataclasses.replace(cfg, depth=depth), device="meta")
        return sum(p.numel() for p in model.parameters())

    one = count(1)
    return one + (cfg.depth - 1) * (count(2) - one)


def device_memory_bytes(device: torch.device) -> int:
    """What the device holds: a GPU's memory, or the machine's physical memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(config: TrainingConfig, device: torch.device, source: str) -> None:
    """Before the model is built (on the grid `parallel` started): the bytes its state needs on
    this rank (weights, gradients, AdamW, ZeRO's master copy, the EMA; activations come on top)
    against the device's memory, counted on the meta device. A model that cannot fit is a
    ConfigError instead of an allocation failure minutes (or terabytes) later."""
    from megagoku.parallel import collectives, gradient_group

    local = local_parameter_count(config.model)
    shards = collectives.world_size(gradient_group())
    state = state_bytes(local, shards, config.parallel.zero_stage)
    need = sum(state) + state[0]  # + the EMA, sharded as the weights are
    have = device_memory_bytes(device)
    if need > have:
        raise ConfigError(
            f"{source}: model: {local / 1e9:,.1f}B parameters per rank need at least "
            f"{need / GIB:,.0f} GiB for weights, gradients, AdamW and the EMA, but the "
            f"{device.type} has {have / GIB:,.0f} GiB; make the model smaller or split it "
            "(parallel.tensor_parallel, parallel.zero_stage over more ranks)")


def activation_elements_per_token(cfg: ModelConfig, tp: int, megatron_sp: bool,
                                  policy: str) -> dict[str, float]:
    """Per block: kept when the block is not checkpointed, and when it is (see module doc)."""
    d, f = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
    outside = 18 * d / (tp if megatron_sp else 1)
    attention, mlp = 9 * d / tp, 2 * f / tp
    plain = outside + attention + mlp
    kept = {"none": plain, "attention": plain - attention, "mlp": plain - mlp,
            "full": d / (tp if megatron_sp else 1)}[policy]
    return {"plain": plain, "checkpointed": kept}


def plan(cfg: ModelConfig, gpus: int, tp: int = 1, ulysses: int = 1, zero_stage: int = 0,
         seq_len: int = 4096, checkpointing: str = "none", activation_checkpoint_every: int = 1,
         megatron_sp: bool = False, activation_bytes: int = 2,
         fragmentation: float = 0.10, device: str = "cuda",
         bucket_elements: int = ZERO_BUCKET_ELEMENTS, rank0_copies: int = 0) -> MemoryPlan:
    """The memory of one device of `gpus` under the layout; `rank0_copies`: the whole copies of
    the model rank 0 keeps for samples and evaluations during training (0, 1 or 2)."""
    if gpus % (tp * ulysses):
        raise ValueError(f"--gpus {gpus} is not divisible by --tp {tp} x --sp {ulysses}")
    if cfg.num_heads % (tp * ulysses):
        raise ValueError(f"{cfg.num_heads} heads cannot be split over tp x sp = {tp * ulysses}")
    dp = gpus // (tp * ulysses)
    shards = dp * ulysses
    split, replicated = split_parameter_counts(cfg)
    local = split // tp + replicated
    weights, grads, optimizer = state_bytes(local, shards, zero_stage)
    tokens = math.ceil(seq_len / ulysses)
    per_token = activation_elements_per_token(cfg, tp, megatron_sp, checkpointing)
    checkpointed = 0 if checkpointing == "none" else math.ceil(cfg.depth / activation_checkpoint_every)
    elements = tokens * (per_token["checkpointed"] * checkpointed
                         + per_token["plain"] * (cfg.depth - checkpointed))
    if checkpointing == "full":  # one block is rebuilt at a time during backward
        elements += tokens * per_token["plain"]
    extra = transient_bytes(local, shards, zero_stage, split + replicated, gpus,
                            largest_tensor_numel(cfg), bucket_elements, device)
    return MemoryPlan(gpus, tp, ulysses, dp, zero_stage, seq_len, checkpointing, local,
                      int(weights), int(grads), int(optimizer), int(elements * activation_bytes),
                      int(extra["ema"]), int(extra["startup_peak"]),
                      int(extra["optimizer_working"]), int(extra["snapshot"]),
                      int(extra["snapshot_gather"]), int(extra["bucket"]),
                      int(extra["gathered"]), 4 * rank0_copies * (split + replicated),
                      fragmentation, device)


def saved_activation_bytes(fn, exclude=()) -> tuple[object, int]:
    """Run `fn()` and count the bytes autograd keeps for backward (distinct storages, not those
    of `exclude`, e.g. the parameters): what activation checkpointing trades for recomputation.
    Returns (fn's result, bytes)."""
    storages: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(storages.values())
