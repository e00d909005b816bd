"""The optimizer step over the process grid: DeepSpeed ZeRO for more than one process (or when
ZeRO is asked for), a plain torch loop for one.

DeepSpeed gets megatron's groups through `MegatronMPU`: its "data parallel" group is our gradient
group (DP x Ulysses), its "model parallel" group is the TP group, so ZeRO shards over DP x Ulysses
and gradient clipping counts each TP-replicated parameter once. The optimizer is torch's AdamW:
no DeepSpeed op build on CPU (nor its shared-memory comm op: `deepspeed_import`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from megagoku.config.schema import ZERO_BUCKET_ELEMENTS
from megagoku.parallel import state
from megagoku.parallel.deepspeed_import import import_deepspeed
from megagoku.parallel.optimizer_state import create_adam_state


class MegatronMPU:
    """The `mpu` object DeepSpeed calls, answered from megatron-core's parallel_state."""

    def get_data_parallel_group(self):
        return state.gradient_group()

    def get_data_parallel_world_size(self) -> int:
        return dist.get_world_size(state.gradient_group())

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(state.gradient_group())

    def get_model_parallel_group(self):
        return state.tensor_parallel_group()

    def get_model_parallel_world_size(self) -> int:
        return state.tensor_parallel_size()

    def get_model_parallel_rank(self) -> int:
        return state.tensor_parallel_rank()

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_rank = get_model_parallel_rank


def deepspeed_config(zero_stage: int, grad_clip: float, bucket_elements: int) -> dict:
    """Under ZeRO 1-3, `bucket_elements` (parallel.zero_bucket_elements) bounds every buffer
    DeepSpeed sizes by a count of elements: the gradient bucket, the all-gather bucket, and under
    ZeRO-3 the parameters prefetched, kept live, or kept gathered for reuse (what the memory plan
    counts). Without ZeRO, DeepSpeed all-reduces in buckets of its own fixed size."""
    buckets = {"reduce_bucket_size": bucket_elements,
               "allgather_bucket_size": bucket_elements} if zero_stage else {}
    if zero_stage == 3:
        buckets.update(stage3_prefetch_bucket_size=bucket_elements,
                       stage3_max_live_parameters=bucket_elements,
                       stage3_max_reuse_distance=bucket_elements)
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, **buckets},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # our metrics log progress
        "wall_clock_breakdown": False,
    }


class TrainEngine:
    """backward + clipping + optimizer step, whatever the layout.

    Ulysses ranks each hold a share of one pack's loss; gradients are averaged over the
    gradient group, so each share is scaled by the Ulysses size before backward.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, zero_stage: int,
                 grad_clip: float, use_deepspeed: bool | None = None,
                 bucket_elements: int = ZERO_BUCKET_ELEMENTS):
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.zero_stage = zero_stage
        self.loss_scale = float(state.layout().ulysses)
        if use_deepspeed is None:
            use_deepspeed = dist.get_world_size() > 1 or zero_stage > 0
        self.deepspeed = None
        if use_deepspeed:
            # imported here: one-process runs never pay for it
            self.deepspeed, _, _, _ = import_deepspeed().initialize(
                model=model, optimizer=optimizer, mpu=MegatronMPU(),
                config=deepspeed_config(zero_stage, grad_clip, bucket_elements),
                dist_init_required=False)
        self.model = model
        self.applied_non_finite_update = False

    def backward(self, loss: torch.Tensor, accumulate: bool = False) -> None:
        """`accumulate`: add to the gradients of an earlier backward of this step (without
        DeepSpeed only, whose accumulation is its own `gradient_accumulation_steps`)."""
        scaled = loss * self.loss_scale if self.loss_scale != 1 else loss
        if self.deepspeed is not None:
            if accumulate:
                raise ValueError("TrainEngine.backward(accumulate=True) needs the plain torch "
                                 "path (one process, ZeRO 0)")
            self.deepspeed.backward(scaled)
        else:
            if not accumulate:
                self.optimizer.zero_grad(set_to_none=True)
            scaled.backward()

    def step(self) -> float:
        """Clip and step; returns the global gradient norm (before clipping). Without DeepSpeed
        a non-finite norm skips the update; DeepSpeed applies it (`applied_non_finite_update`
        then says so: only a rollback can undo it)."""
        self.applied_non_finite_update = False
        if self.deepspeed is not None:
            # DeepSpeed reports the norm under ZeRO 1-3 only; without ZeRO the gradients are
            # whole (and all-reduced) in .grad before the step: measure them there.
            norm = global_grad_norm(self.model) if self.zero_stage == 0 else None
            self.deepspeed.step()
            if norm is None:
                reported = self.deepspeed.get_global_grad_norm()
                norm = float(reported) if reported is not None else math.nan
            self.applied_non_finite_update = not math.isfinite(norm)
            return norm
        clip = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if math.isfinite(norm):
            self.optimizer.step()
        return norm

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def create_optimizer_state(self, step: float) -> None:
        """Make AdamW's state (zero moments, step count `step`) before the first step, so that a
        checkpoint's moments can be written into it (`optimizer_state.set_full_moment`), under
        every ZeRO stage (collective)."""
        zero_optimizer = self.deepspeed.optimizer if self.deepspeed is not None else None
        create_adam_state(self.model, self.optimizer, zero_optimizer, step)

    def restore_progress(self, step: int) -> None:
        """DeepSpeed's own step and sample counts, as after `step` steps of a resumed run."""
        if self.deepspeed is not None:
            self.deepspeed.global_steps = step
            self.deepspeed.global_samples = step * self.deepspeed.train_batch_size()


def global_grad_norm(model: nn.Module) -> float:
    """L2 norm of the whole model's gradients: tensor-parallel pieces summed over the TP group,
    replicated parameters counted once (accumulated on the gradients' device, read once)."""
    from megagoku.parallel.weights import is_tp_split

    device = next(model.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # [TP pieces, replicated]
    for p in model.parameters():
        if p.grad is not None:
            sums[0 if is_tp_split(p) else 1] += p.grad.detach().double().square().sum()
    if state.tensor_parallel_size() > 1:
        split = sums[:1].clone()
        dist.all_reduce(split, group=state.tensor_parallel_group())
        sums[0] = split[0]
    return math.sqrt(float(sums.sum()))
