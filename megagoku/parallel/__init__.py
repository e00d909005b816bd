"""Process groups and the megatron-core layers the model is built from.

Only this package touches process groups or megatron's global state (docs/architecture.md).
"""

from megagoku.parallel.layers import ColumnParallelLinear, RowParallelLinear, model_parallel_config
from megagoku.parallel.state import (ensure_single_process_groups, resolve_device,
                                     tensor_parallel_size)

__all__ = [
    "ColumnParallelLinear",
    "RowParallelLinear",
    "ensure_single_process_groups",
    "model_parallel_config",
    "resolve_device",
    "tensor_parallel_size",
]
