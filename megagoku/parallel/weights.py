"""Whole tensors from the pieces ranks hold, and the pieces from whole tensors.

A megatron parameter marked `tensor_model_parallel` holds 1/TP of the whole along
`partition_dim` (QKV is laid out per head, so concatenation is the model at every TP size);
everything else is replicated over TP. Under ZeRO-3 DeepSpeed additionally partitions each
parameter over the gradient group; `GatheredParameters` brings it back for the duration of a read.
Everything here is collective: every rank calls it for the same tensors in the same order.
"""

from __future__ import annotations

import contextlib
from typing import Collection, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from megagoku.parallel import state
from megagoku.parallel.deepspeed_import import import_deepspeed


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
    with import_deepspeed().zero.GatheredParameters(params):
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
    """Whole tensors that do not fit a model: one line naming the tensors that differ."""


def whole_shape(param: torch.Tensor) -> list[int]:
    """The logical shape of a parameter or buffer, from this rank's piece."""
    shape = list(getattr(param, "ds_shape", param.shape))  # ZeRO-3 keeps the TP-local shape
    if is_tp_split(param):
        shape[param.partition_dim] *= state.tensor_parallel_size()
    return shape


def whole_misfit(whole: torch.Tensor, like: torch.Tensor) -> Optional[tuple[str, str]]:
    """How a whole tensor differs from the model's tensor `like` (a rank's piece of it), as
    (what differs, "theirs vs the model's"): its whole shape, or floating point or not (the
    reader checked the values); None where it fits."""
    need = whole_shape(like)
    if list(whole.shape) != need:
        return "shapes", f"{list(whole.shape)} vs {need}"
    if whole.is_floating_point() != like.is_floating_point():
        return "dtypes", f"{whole.dtype} vs {like.dtype}"
    return None


def summarise_names(names: Collection[str], limit: int = 6) -> str:
    """Tensor names for one line: a block's tensors as `blocks.N.*`, at most `limit` items."""
    groups: list[str] = []
    for name in sorted(names, key=lambda n: [int(p) if p.isdigit() else p
                                             for p in n.split(".")]):
        parts = name.split(".")
        item = f"{parts[0]}.{parts[1]}.*" if parts[0] == "blocks" and len(parts) > 2 else name
        if item not in groups:
            groups.append(item)
    more = f", ... ({len(names)} tensors)" if len(groups) > limit else ""
    return ", ".join(groups[:limit]) + more


class WeightsFit:
    """Whole tensors by name held against a model's logical tensors, both ways: the one check
    of the weights a sample is generated with (`check_fits`) and of a checkpoint restored for
    training (`train.train_state.restore_weights`, which hands it the stored tensors one at a
    time, so that no more than one is read at once). Every misfit is collected, then told in one
    line (`problems`): tensors of the weights the model has no place for, tensors of the model
    the weights lack (but those in `fresh`, which keep their initial values), shapes and
    dtypes that differ."""

    def __init__(self, model: nn.Module, stored: Iterable[str], fresh: Collection[str] = ()):
        params = dict(model.named_parameters())
        self.wanted = {name: params.get(name, t) for name, t in model.weights().items()}
        stored = set(stored)
        self.unused = sorted(stored - set(self.wanted))
        self.missing = sorted(n for n in self.wanted if n not in stored and n not in fresh)
        self.differ: dict[str, dict[str, str]] = {"shapes": {}, "dtypes": {}}

    def check(self, name: str, whole: torch.Tensor) -> bool:
        """Whether `whole` fits the model's tensor `name`; a misfit is recorded."""
        misfit = whole_misfit(whole, self.wanted[name])
        if misfit is not None:
            self.differ[misfit[0]][name] = f"{name} {misfit[1]}"
        return misfit is None

    @property
    def skipped(self) -> set[str]:
        """The model's tensors that keep their values: missing, or of another shape or dtype."""
        return set(self.missing).union(*self.differ.values())

    def problems(self) -> str:
        """The misfits in one line ("" when everything fits)."""
        parts = [self.unused and f"{len(self.unused)} tensors of the checkpoint have no place "
                                 f"in this model ({summarise_names(self.unused)})",
                 self.missing and f"{len(self.missing)} tensors of the model are not in the "
                                  f"checkpoint ({summarise_names(self.missing)})"]
        for what, found in self.differ.items():
            shown = list(found.values())
            parts.append(found and f"{len(found)} {what} differ (checkpoint vs model: "
                                   f"{', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''})")
        return "; ".join(part for part in parts if part)


def check_fits(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """WeightsMismatch unless `weights` has every tensor of `model`, no other, each of the whole
    shape and of the same kind of dtype (floating point or not): `WeightsFit`'s line."""
    fit = WeightsFit(model, weights)
    for name in fit.wanted:
        if name in weights:
            fit.check(name, weights[name])
    problems = fit.problems()
    if problems:
        raise WeightsMismatch(f"does not fit this model: {problems} (weights of another model "
                              "config?)")


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
