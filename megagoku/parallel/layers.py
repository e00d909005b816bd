"""megatron-core tensor-parallel layers and mappings, imported in one place.

torch 2.13 warns on every sequence-parallel step that the `all_gather_into_tensor` /
`reduce_scatter_tensor` megatron calls are deprecated; that warning is silenced here, nothing else
(megatron's import itself: `megatron_import`).
"""

import warnings

import torch

from megagoku.parallel.megatron_import import megatron_import

with megatron_import():
    from megatron.core import ModelParallelConfig
    from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear,
                                               set_tensor_model_parallel_attributes)
    from megatron.core.tensor_parallel.mappings import (all_to_all,
                                                        copy_to_tensor_model_parallel_region,
                                                        gather_from_sequence_parallel_region,
                                                        reduce_from_tensor_model_parallel_region,
                                                        scatter_to_sequence_parallel_region)


warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated",
                        category=FutureWarning)


def model_parallel_config(tensor_parallel_size: int = 1, sequence_parallel: bool = False,
                          params_dtype: torch.dtype = torch.float32) -> ModelParallelConfig:
    """The megatron config our layers share. CPU initialisation builds the full weight with the
    same seed on every rank and keeps this rank's slice, so that every TP size builds the same model;
    it also lets the layers be constructed on the meta device for counting."""
    return ModelParallelConfig(
        tensor_model_parallel_size=tensor_parallel_size,
        sequence_parallel=sequence_parallel and tensor_parallel_size > 1,
        use_cpu_initialization=True,
        perform_initialization=True,
        params_dtype=params_dtype,
    )


def grad_summed_over_tp(tensor: torch.Tensor) -> torch.Tensor:
    """Identity forward; backward sums the gradient over the tensor-parallel group.

    For a tensor replicated on every TP rank whose use on each rank sees only that rank's part
    (QK-norm weights applied to this rank's heads; norm weights, biases and the adaLN modulation
    applied to this rank's sequence shard under megatron sequence parallelism). Done inside
    autograd, so the gradient is whole before ZeRO's backward hooks take it.
    """
    return copy_to_tensor_model_parallel_region(tensor)


def mark_tp_split(param: torch.nn.Parameter, dim: int = 0) -> torch.nn.Parameter:
    """Mark a parameter that holds this rank's 1/TP of the whole along `dim` (as megatron marks its
    layers' weights): checkpoints gather it, ZeRO and clipping count it once per TP rank, the memory
    plan counts it as split."""
    set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1)
    return param


def sum_over_tp(partial: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel group, forward and backward.

    For a per-token partial sum over this rank's heads whose total every rank then uses for its
    own heads (the sum of squares of Goku's whole-width QK norm): the loss depends on the total
    through every rank's heads, so the gradient of each rank's partial is the sum of all ranks'
    gradients of the total. megatron's reduce (all-reduce forward, identity backward) followed by
    its copy (identity forward, all-reduce backward). Called inside a fused op's forward or
    backward (no autograd there) it is one all-reduce."""
    return copy_to_tensor_model_parallel_region(reduce_from_tensor_model_parallel_region(partial))


def scatter_sequence(x: torch.Tensor) -> torch.Tensor:
    """Megatron SP: keep this TP rank's slice of the tokens (dim 0); backward all-gathers."""
    return scatter_to_sequence_parallel_region(x)


def gather_sequence(x: torch.Tensor) -> torch.Tensor:
    """Megatron SP: all-gather the tokens (dim 0) from the TP group. What follows runs
    replicated on every TP rank, so backward only splits the gradient (no reduction)."""
    return gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)


__all__ = ["ColumnParallelLinear", "all_to_all", "RowParallelLinear", "gather_sequence", "grad_summed_over_tp",
           "mark_tp_split", "model_parallel_config", "scatter_sequence", "sum_over_tp"]
