"""megatron-core tensor-parallel linear layers, imported in one place.

megatron-core warns at import time that Transformer Engine and Apex are missing (they are GPU-only
accelerators it falls back from); those warnings are silenced here, nothing else.
"""

import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import ModelParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear


def model_parallel_config(tensor_parallel_size: int = 1,
                          params_dtype: torch.dtype = torch.float32) -> ModelParallelConfig:
    """The megatron config our layers share. CPU initialisation builds the full weight with the
    same seed on every rank and keeps this rank's slice, so that every TP size builds the same model;
    it also lets the layers be constructed on the meta device for counting."""
    return ModelParallelConfig(
        tensor_model_parallel_size=tensor_parallel_size,
        use_cpu_initialization=True,
        perform_initialization=True,
        params_dtype=params_dtype,
    )


__all__ = ["ColumnParallelLinear", "RowParallelLinear", "model_parallel_config"]
