"""Whole tensors from the pieces ranks hold, and the pieces from whole tensors.

A megatron parameter marked `tensor_model_parallel` holds 1/TP of the whole along
`partition_dim` (QKV is laid out per head, so concatenation is the model at every TP size);
everything else is replicated over TP. Under ZeRO-3 DeepSpeed additionally partitions each
parameter over the gradient group; `GatheredParameters` brings it back for the duration of a read.
Everything here is collective: every rank calls it for the same tensors in the same order.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from megagoku.parallel import state


def is_tp_split(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False)) and state.tensor_parallel_size() > 1


def gather_tp(local: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Concatenate the TP ranks' pieces of `param`'s tensor `local` (a weight, a gradient)."""
    if not is_tp_split(param):
        return local
    pieces = [torch.empty_like(local) for _ in range(state.tensor_parallel_size())]
    dist.all_gather(pieces, local.contiguous(), group=state.tensor_parallel_group())
    return torch.cat(pieces, dim=param.partition_dim)


def tp_piece(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This TP rank's piece of a whole tensor for `param`."""
    if not is_tp_split(param):
        return full
    return full.chunk(state.tensor_parallel_size(),
                      dim=param.partition_dim)[state.tensor_parallel_rank()]


def _zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter]):
    """ZeRO-3 parameters whole for the duration (no-op for anything else)."""
    params = [p for p in params if _zero3(p)]
    if not params:
        yield
        return
    import deepspeed
    with deepspeed.zero.GatheredParameters(params):
        yield


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's tensors (what a one-process model's `weights()` holds), on every rank."""
    params = dict(model.named_parameters())
    out = {}
    for name, tensor in model.weights().items():
        param = params.get(name)
        if param is None:  # a buffer: replicated
            out[name] = tensor.detach().clone()
            continue
        with gathered([param]):
            out[name] = gather_tp(param.detach().clone(), param)
    return out


class WeightsMismatch(ValueError):
    """Whole tensors that do not fit a model: one line naming the first tensor that differs."""


def whole_shape_of(tensor: torch.Tensor) -> list[int]:
    """The whole (TP-gathered) shape of a rank's parameter or buffer."""
    shape = list(getattr(tensor, "ds_shape", tensor.shape))
    if is_tp_split(tensor):
        shape[tensor.partition_dim] *= state.tensor_parallel_size()
    return shape


def check_fits(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """WeightsMismatch unless `weights` has every tensor of `model`, no other, each of the whole
    shape and of the same kind of dtype (floating point or not)."""
    params = dict(model.named_parameters())
    wanted = {name: params.get(name, t) for name, t in model.weights().items()}
    missing, unknown = sorted(set(wanted) - set(weights)), sorted(set(weights) - set(wanted))
    if missing or unknown:
        raise WeightsMismatch(f"weights do not fit this model: {len(missing)} missing "
                              f"{missing[:3]}, {len(unknown)} unknown {unknown[:3]}")
    for name, like in wanted.items():
        got, need = list(weights[name].shape), whole_shape_of(like)
        if got != need:
            raise WeightsMismatch(f"{name} is {got} but this model needs {need} (weights of "
                                  "another model config?)")
        if weights[name].is_floating_point() != like.is_floating_point():
            raise WeightsMismatch(f"{name} is {weights[name].dtype} but this model holds "
                                  f"{like.dtype}")


def load_full_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load whole tensors into a (tensor-parallel) model: each rank keeps its piece. Checked
    first (`check_fits`): a mismatch is one WeightsMismatch line, not a traceback."""
    check_fits(model, weights)
    params = dict(model.named_parameters())
    local = {}
    for name, tensor in weights.items():
        param = params.get(name)
        local[name] = tp_piece(tensor, param) if param is not None else tensor
    model.load_weights(local)
