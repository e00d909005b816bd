"""Process groups, distributed start, sequence sharding and the megatron-core layers the model
is built from.

Only this package touches process groups or megatron's global state (docs/architecture.md).
"""

from megagoku.parallel.layers import (ColumnParallelLinear, RowParallelLinear, gather_sequence,
                                      grad_summed_over_tp, mark_tp_split, model_parallel_config,
                                      scatter_sequence,
                                      sum_over_tp)
from megagoku.parallel.sequence import (SequenceShard, current_shard, gather_shards, heads_to_seq,
                                        seq_to_heads)
from megagoku.parallel.state import (ParallelLayout, alone, data_parallel_rank, data_parallel_size,
                                     ensure_single_process_groups, gradient_group,
                                     initialize_groups, layout, resolve_device,
                                     tensor_parallel_group, tensor_parallel_rank,
                                     tensor_parallel_size, ulysses_group, ulysses_rank)

__all__ = [
    "ColumnParallelLinear",
    "ParallelLayout",
    "RowParallelLinear",
    "SequenceShard",
    "alone",
    "current_shard",
    "data_parallel_rank",
    "data_parallel_size",
    "ensure_single_process_groups",
    "gather_sequence",
    "gather_shards",
    "grad_summed_over_tp",
    "gradient_group",
    "heads_to_seq",
    "initialize_groups",
    "layout",
    "mark_tp_split",
    "model_parallel_config",
    "resolve_device",
    "scatter_sequence",
    "seq_to_heads",
    "sum_over_tp",
    "tensor_parallel_group",
    "tensor_parallel_rank",
    "tensor_parallel_size",
    "ulysses_group",
    "ulysses_rank",
]
