"""Process-group set-up. megatron's parallel layers need `parallel_state` initialised even in one
process; a world-size-1 gloo group over an in-memory store needs no port and no launcher."""

import warnings

import torch
import torch.distributed as dist

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state


def ensure_single_process_groups() -> None:
    """Initialise a one-process gloo world and megatron's model-parallel groups (TP=1) unless a
    launcher already did. Idempotent."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)


def tensor_parallel_size() -> int:
    if not parallel_state.model_parallel_is_initialized():
        return 1
    return parallel_state.get_tensor_model_parallel_world_size()


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no GPU")
    return torch.device(name)
