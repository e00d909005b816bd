"""What a rank owns of each logical tensor, and how a model is built so that a rank never holds
more: its tensor-parallel piece, and under ZeRO-3 only its partition of that piece.

A logical tensor is a parameter as one process holds it (`whole_shape`). A rank owns
- without ZeRO-3: its TP piece (`param.data`; the whole tensor where the parameter is
  replicated over TP);
- under ZeRO-3: DeepSpeed's partition of its TP piece, `param.ds_tensor`: the TP piece
  flattened, padded with zeros to a multiple of the gradient group's size, and cut in equal
  consecutive parts, part r for the rank of rank r in that group (DeepSpeed's
  `Init._partition_param`; tests/distributed/test_construction.py holds us to it by gathering
  what `write_whole` wrote through DeepSpeed's own `GatheredParameters`).
`owned` is that tensor; `own_piece` cuts it from a whole tensor (a view where it can); `gather_whole`
puts the pieces back together (collective). Everything that writes initial weights, restores a
checkpoint or keeps a copy of the weights (the EMA) goes through these three, so none of them ever
holds more than one logical tensor beyond the rank's own pieces.

Building (a model built on the meta device + `materialize`, or `zero3_construction` +
`initialize_partitions`): the model is constructed
without memory (meta device), then each parameter is replaced by an uninitialised tensor of the
size this rank owns and filled from a whole initial value computed one logical tensor at a time.
Under ZeRO-3 DeepSpeed's `zero.Init` builds it instead: each module's parameters are allocated
and partitioned as the module is constructed (its peak is one module's TP piece), then the
partitions are filled the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from megagoku.parallel import state
from megagoku.parallel.weights import gather_tp, tp_piece, whole_shape

# (name, whole shape) -> the whole initial value (float32, on the rank's device).
InitialValue = Callable[[str, list[int]], torch.Tensor]


def is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_tensor")


def _partition(param: torch.Tensor) -> tuple[int, int, int]:
    """(partition size, this rank's index in the partition group, its size) of a ZeRO-3
    parameter."""
    group = param.ds_process_group
    world = dist.get_world_size(group)
    return math.ceil(param.ds_numel / world), dist.get_rank(group), world


def owned(param: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds for `param`: its ZeRO-3 partition (flat) or its TP piece."""
    return param.ds_tensor if is_zero3(param) else param.data


def own_piece(param: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """This rank's piece of the whole logical tensor `whole` of `param`, shaped as `owned(param)`
    (the ZeRO-3 partition padded with zeros past the end of the tensor)."""
    piece = tp_piece(whole, param)
    if not is_zero3(param):
        return piece
    size, rank, _ = _partition(param)
    flat = piece.reshape(-1)
    start = min(size * rank, flat.numel())
    part = flat[start:start + size]
    if part.numel() < size:
        part = torch.cat([part, part.new_zeros(size - part.numel())])
    return part


def gather_whole(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """The whole logical tensor from every rank's `local` (shaped as `owned(param)`: the
    parameter itself, or a copy kept alongside it such as the EMA's); collective over the
    gradient group (ZeRO-3) and the TP group (TP-split parameters)."""
    if is_zero3(param):
        size, _, world = _partition(param)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous(), group=param.ds_process_group)
        local = torch.cat(parts)[:param.ds_numel].view(param.ds_shape)
    return gather_tp(local, param)


@torch.no_grad()
def write_whole(param: torch.Tensor, whole: torch.Tensor) -> None:
    """Set `param` to the whole logical tensor `whole`: each rank copies only its piece. Under
    ZeRO-3, before DeepSpeed's engine exists or while the parameter is released (not gathered):
    the partition is the copy DeepSpeed keeps."""
    if list(whole.shape) != whole_shape(param):
        raise ValueError(f"a whole tensor of shape {list(whole.shape)} for a parameter of "
                         f"shape {whole_shape(param)}")
    owned(param).copy_(own_piece(param, whole))


def owned_bytes(model: nn.Module) -> int:
    """Bytes of the parameters this rank holds (its pieces; ZeRO-3 partitions with padding)."""
    return sum(owned(p).numel() * owned(p).element_size() for p in model.parameters())


def meta_owned_bytes(model: nn.Module, zero3: bool) -> int:
    """The bytes `owned_bytes` would count on this rank for a model built on the meta device
    under the same grid (its TP pieces), ZeRO-3 partitioned over the gradient group when
    `zero3`: what the rank would materialise, counted without allocating it."""
    shards = dist.get_world_size(state.gradient_group()) if zero3 else 1
    return sum(math.ceil(p.numel() / shards) * p.element_size() for p in model.parameters())


def _parameters_by_module(model: nn.Module) -> Iterator[tuple[nn.Module, str, str, nn.Parameter]]:
    for module_name, module in model.named_modules():
        for key, param in list(module._parameters.items()):
            if param is not None:
                yield module, key, f"{module_name}.{key}" if module_name else key, param


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device, initial: InitialValue) -> nn.Module:
    """Give a model built on the meta device its real parameters, this rank's TP pieces only,
    each set from `initial(name, whole_shape)` (one logical tensor alive at a time). The
    megatron attributes of each parameter (which dimension TP splits) are kept."""
    for module, key, name, param in _parameters_by_module(model):
        real = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device=device),
                            requires_grad=param.requires_grad)
        real.__dict__.update(param.__dict__)  # tensor_model_parallel, partition_dim, ...
        real.data.copy_(tp_piece(initial(name, whole_shape(param)), param))
        module._parameters[key] = real
    for module_name, module in model.named_modules():
        for key, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                raise ValueError(f"{module_name}.{key}: a buffer built on the meta device has "
                                 "no value to materialise")
    return model


@torch.no_grad()
def initialize_partitions(model: nn.Module, initial: InitialValue) -> nn.Module:
    """Fill the parameters of a model built under `zero3_construction` (or already
    materialised) from `initial`, each rank writing only what it owns."""
    for _, _, name, param in _parameters_by_module(model):
        write_whole(param, initial(name, whole_shape(param)))
    return model


@contextlib.contextmanager
def zero3_construction(grad_clip: float = 1.0):
    """Modules constructed inside are partitioned (ZeRO-3, over the gradient group) as each is
    built, by DeepSpeed's `zero.Init`, in float32 on this rank's accelerator (the CPU here). The values they are built with
    are meaningless (set them with `initialize_partitions`)."""
    from megagoku.config.schema import ZERO_BUCKET_ELEMENTS
    from megagoku.parallel.deepspeed_import import import_deepspeed
    from megagoku.parallel.engine import MegatronMPU, deepspeed_config

    # zero.Init reads the launcher's LOCAL_RANK; a one-process run started without one is rank 0.
    # (It reads no bucket size: the default stands in for the run's parallel.zero_bucket_elements.)
    os.environ.setdefault("LOCAL_RANK", "0")
    deepspeed = import_deepspeed()
    # dtype=None: the dtype then comes from the config (neither bf16 nor fp16: float32). An
    # explicit dtype is ignored by DeepSpeed 0.19.8 on a CPU without oneDNN fp16 (its
    # `dtype or half if fp16_supported else bfloat16` lacks brackets): parameters came out bf16.
    with deepspeed.zero.Init(data_parallel_group=state.gradient_group(), mpu=MegatronMPU(),
                             config_dict_or_path=deepspeed_config(3, grad_clip,
                                                                  ZERO_BUCKET_ELEMENTS),
                             remote_device=None, dtype=None, mem_efficient_linear=False):
        yield
