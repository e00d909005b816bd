"""Process groups: megatron-core's `parallel_state` holds them all.

The grid is TP (fastest varying: neighbouring ranks, one node) x Ulysses (megatron's
context-parallel dimension carries it) x DP. Gradients are averaged over DP x Ulysses
(`gradient_group`): Ulysses ranks hold different tokens of the same packs, so their gradients are
parts of one sum. megatron's layers need `parallel_state` initialised even in one process; a
world-size-1 gloo group over an in-memory store needs no port and no launcher.
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from megagoku.config.schema import ParallelConfig
from megagoku.parallel import cpu_compat

from megagoku.parallel.megatron_import import megatron_import

with megatron_import():
    from megatron.core import parallel_state


@dataclass(frozen=True)
class ParallelLayout:
    """What the model needs to know of the grid (set by `initialize_groups`)."""

    tensor_parallel: int = 1
    ulysses: int = 1
    sequence_parallel: bool = False  # megatron's, inside the TP group

    @property
    def megatron_sp(self) -> bool:
        return self.sequence_parallel and self.tensor_parallel > 1


_layout = ParallelLayout()


def initialize_groups(cfg: ParallelConfig) -> ParallelLayout:
    """Build the TP / Ulysses / DP groups over the already started world (see `distributed`)."""
    global _layout, _grid
    world = dist.get_world_size()
    split = cfg.tensor_parallel * cfg.ulysses
    if world % split:
        raise ValueError(f"parallel: world size {world} is not divisible by tensor_parallel x "
                         f"ulysses = {cfg.tensor_parallel} x {cfg.ulysses}")
    cpu_compat.install()
    # megatron's groups are built anew only when the grid changed: the groups of the same grid
    # over the same world are the same groups, reused. Each gloo group keeps a thread that wakes
    # every 10 ms (gloo's tcp Loop polls `epoll_wait` with a 10-ms timeout) for as long as the
    # process lives, and megatron's `destroy_model_parallel` forgets its groups without ending
    # them: a process that trained in turn (the test suite's, ~30 groups a run) ended up with
    # ~850 such threads waking 85,000 times a second, a core's worth of switches.
    grid = (dist.group.WORLD, cfg.tensor_parallel, cfg.ulysses)
    if grid != _grid or not parallel_state.model_parallel_is_initialized():
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=cfg.tensor_parallel,
                                                 context_parallel_size=cfg.ulysses)
        _grid = grid
    _layout = ParallelLayout(cfg.tensor_parallel, cfg.ulysses, cfg.sequence_parallel)
    return _layout


_grid = None  # (world group, TP, Ulysses) that megatron's groups were built for


def ensure_single_process_groups() -> None:
    """Initialise a one-process gloo world and megatron's groups (all sizes 1) unless a launcher
    or `initialize_groups` already did. Idempotent."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        initialize_groups(ParallelConfig())


def layout() -> ParallelLayout:
    return _layout


_one_rank_group = None


def _group_of_one():
    """A process group of this process alone, made here without any other rank (its own store):
    megatron's mappings return their input over a group of size 1 before any communication, so
    nothing is ever sent over it."""
    global _one_rank_group
    if _one_rank_group is None:
        _one_rank_group = dist.ProcessGroupGloo(dist.HashStore(), 0, 1,
                                                datetime.timedelta(minutes=30))
    return _one_rank_group


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """For the duration, this process sees the grid of a one-process run, whatever grid it is
    in: TP = Ulysses = 1, and megatron's tensor-parallel group is one of this process alone. A
    model built inside has whole (unsplit) layers, which keep that group for good, and one run
    inside makes no collective call: what rank 0 does with its copy of the model (samples and
    evaluations during training) while the other ranks go on training.

    Only the main thread reads the grid (the pack prefetcher and the checkpoint writer's threads
    never do), and the training model keeps the groups it was built with, so the grid is back,
    unchanged, on exit."""
    global _layout
    saved = (_layout, parallel_state._TENSOR_MODEL_PARALLEL_GROUP,
             parallel_state._MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE,
             parallel_state._MPU_TENSOR_MODEL_PARALLEL_RANK)
    _layout = ParallelLayout()
    parallel_state._TENSOR_MODEL_PARALLEL_GROUP = _group_of_one()
    parallel_state._MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE = None
    parallel_state._MPU_TENSOR_MODEL_PARALLEL_RANK = None
    try:
        yield
    finally:
        (_layout, parallel_state._TENSOR_MODEL_PARALLEL_GROUP,
         parallel_state._MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE,
         parallel_state._MPU_TENSOR_MODEL_PARALLEL_RANK) = saved


def tensor_parallel_size() -> int:
    return _layout.tensor_parallel


def tensor_parallel_rank() -> int:
    if _layout.tensor_parallel == 1:
        return 0
    return parallel_state.get_tensor_model_parallel_rank()


def tensor_parallel_group():
    return parallel_state.get_tensor_model_parallel_group()


def ulysses_group():
    return parallel_state.get_context_parallel_group()


def ulysses_rank() -> int:
    if _layout.ulysses == 1:
        return 0
    return parallel_state.get_context_parallel_rank()


def data_parallel_rank() -> int:
    """Which packs this rank trains on (Ulysses and TP ranks of one replica share them)."""
    if not parallel_state.model_parallel_is_initialized():
        return 0
    return parallel_state.get_data_parallel_rank()


def data_parallel_size() -> int:
    if not parallel_state.model_parallel_is_initialized():
        return 1
    return parallel_state.get_data_parallel_world_size()


def gradient_group():
    """DP x Ulysses: the ranks whose gradients are averaged (and over which ZeRO shards)."""
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no GPU")
    return torch.device(name)
