"""AdamW's per-parameter state (`exp_avg`, `exp_avg_sq`, `step`), read and written whole, whoever
holds it: torch's own AdamW (one process, ZeRO-0), DeepSpeed's ZeRO-1/2 optimizer (one flat fp32
partition per param group and rank) or ZeRO-3's (flat fp32 partitions of the partitioned
parameters).

Reading and writing go through DeepSpeed's per-parameter fragment API (`safe_get/set_full_
optimizer_state`): each rank reads or writes the slice of a parameter's moment that lies in its
partition. Writing needs the state to exist first, and DeepSpeed 0.19.8 creates it lazily:
torch's AdamW makes `exp_avg`/`exp_avg_sq`/`step` at its first step, and ZeRO-1/2 links each
parameter's fragment to that state (`_hp_mapping.optim_fragment`) only after its first step
(`_lazy_init_hp_params_optimizer_state`). `create_adam_state` does both ahead of the first step,
as that step would (zeros; the caller then writes the saved values in). It touches DeepSpeed
internals, so the DeepSpeed version is pinned (requirements/) and the save x load matrix
(tests/train/test_resume_matrix.py) runs in CI.

The fp32 master weights need no writing: DeepSpeed builds them from the module's weights when it
wraps the model, so weights loaded into the module before `deepspeed.initialize` are the masters.
Everything here is collective over the gradient group: every rank calls it for every parameter in
the same order.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def uses_deepspeed_fragments(param: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO (any stage) holds this parameter's optimizer state."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def full_moment(param: nn.Parameter, optimizer: torch.optim.Optimizer,
                moment: str) -> Optional[torch.Tensor]:
    """This TP rank's whole (not ZeRO-partitioned) moment of `param`; None before the first
    step."""
    if uses_deepspeed_fragments(param):
        from deepspeed.utils import safe_get_full_optimizer_state

        return safe_get_full_optimizer_state(param, moment)
    return optimizer.state.get(param, {}).get(moment)


def set_full_moment(param: nn.Parameter, optimizer: torch.optim.Optimizer, moment: str,
                    value: torch.Tensor) -> None:
    """Write this TP rank's whole moment of `param` (after `create_adam_state`)."""
    if uses_deepspeed_fragments(param):
        from deepspeed.utils import safe_set_full_optimizer_state

        safe_set_full_optimizer_state(param, value.to(param.device), moment)
    else:
        optimizer.state[param][moment] = value.to(param.device, param.dtype).clone()


def create_adam_state(model: nn.Module, optimizer: torch.optim.Optimizer, zero_optimizer,
                      step: float) -> None:
    """AdamW's state as its first step creates it (zero moments), with the step count `step`, on
    the tensors AdamW actually steps: the model's parameters (no ZeRO), ZeRO-1/2's flat fp32
    partitions (`zero_optimizer` is DeepSpeed's ZeRO-1/2 optimizer, whose parameters' fragments
    are then linked to that state), or ZeRO-3's flat fp32 partitions (found from the
    parameters)."""
    zero3 = next((p._z3_optimizer for p in model.parameters() if hasattr(p, "_z3_optimizer")),
                 None)
    if zero3 is not None:  # it puts its fp32 partitions into the param groups only to step
        flats = list(zero3.fp32_partitioned_groups_flat)
    elif zero_optimizer is not None and hasattr(zero_optimizer, "single_partition_of_fp32_groups"):
        flats = list(zero_optimizer.single_partition_of_fp32_groups)
    else:
        flats = [p for group in optimizer.param_groups for p in group["params"]]
    for flat in flats:
        state = optimizer.state[flat]
        for moment in ADAM_MOMENTS:
            if moment not in state:
                state[moment] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        # torch's AdamW keeps the step as a float32 scalar tensor, on the CPU unless fused or
        # capturable (then on the parameter's device, where its kernel reads it)
        on_device = optimizer.defaults.get("fused") or optimizer.defaults.get("capturable")
        state["step"] = torch.tensor(float(step), dtype=torch.float32,
                                     device=flat.device if on_device else "cpu")
    if zero3 is None and hasattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state"):
        # ZeRO-1/2: point every parameter's fragment at the state just made (its first step
        # would do this, once: the flag says whether it has)
        zero_optimizer._hp_optimizer_states_linked = False
        zero_optimizer._lazy_init_hp_params_optimizer_state()
