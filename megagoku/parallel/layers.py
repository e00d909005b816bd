"""megatron-core tensor-parallel layers and mappings, imported in one place.

megatron-core warns at import time that Transformer Engine and Apex are missing (they are GPU-only
accelerators it falls back from), and torch 2.13 warns on every sequence-parallel step that the
`all_gather_into_tensor` / `reduce_scatter_tensor` megatron calls are deprecated; those warnings are silenced here, nothing else.
"""

import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import ModelParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.tensor_parallel.mappings import (all_to_all,
                                                        copy_to_tensor_model_parallel_region,
                                                        gather_from_sequence_parallel_region,
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


def scatter_sequence(x: torch.Tensor) -> torch.Tensor:
    """Megatron SP: keep this TP rank's slice of the tokens (dim 0); backward all-gathers."""
    return scatter_to_sequence_parallel_region(x)


def gather_sequence(x: torch.Tensor) -> torch.Tensor:
    """Megatron SP: all-gather the tokens (dim 0) from the TP group. What follows runs
    replicated on every TP rank, so backward only splits the gradient (no reduction)."""
    return gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)


__all__ = ["ColumnParallelLinear", "all_to_all", "RowParallelLinear", "gather_sequence", "grad_summed_over_tp",
           "model_parallel_config", "scatter_sequence"]
