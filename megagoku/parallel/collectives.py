"""The collectives the rest of the code needs, named for what they answer.

House rule (docs/architecture.md): only `parallel/` calls `torch.distributed`; the trainer, the
tools and inference ask these functions instead (`tests/test_architecture.py` checks it). Each
one is a no-op answer on a world of one process, so callers need no `if world > 1` of their own;
each must be called by every rank of the group, in the same order, like any collective.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_started() -> bool:
    """Whether a process group exists in this process."""
    return dist.is_initialized()


def rank() -> int:
    return dist.get_rank()


def world_size(group: Optional[object] = None) -> int:
    return dist.get_world_size(group)


def barrier() -> None:
    if dist.get_world_size() > 1:
        dist.barrier()


def sum_over(value: torch.Tensor, group: Optional[object] = None) -> torch.Tensor:
    """A copy of `value` summed over `group` (the world when None)."""
    if dist.get_world_size(group) == 1:
        return value
    total = value.clone()
    dist.all_reduce(total, group=group)
    return total


def mean_over(value: torch.Tensor, group: Optional[object]) -> torch.Tensor:
    """Mean of a tensor over a process group (for logging across data-parallel replicas)."""
    if group is None or dist.get_world_size(group) == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, group=group)
    return value / dist.get_world_size(group)


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank, on every rank (so that all stop at the same step)."""
    if dist.get_world_size() == 1:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def from_rank0(value: T) -> T:
    """Rank 0's `value` (picklable), on every rank."""
    if dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank: copies, also on one
    process (a checkpoint's background writer may hold them while training goes on)."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


# Messages through the process group's store (the TCPStore the group was started with). Unlike
# the collectives above they need no matching call on the other ranks, so a background thread
# (the checkpoint writer) may use them while the main thread trains; a waiting rank blocks in
# the store's server, without polling anything.

def post(key: str, value: str) -> None:
    """Leave `value` under `key` for a rank that waits for it (`wait_for_post`)."""
    _default_store().set(key, value)


def wait_for_post(key: str, timeout_s: float) -> str:
    """The value posted under `key`, waiting up to `timeout_s`; TimeoutError after that."""
    from datetime import timedelta

    store = _default_store()
    try:
        store.wait([key], timedelta(seconds=max(timeout_s, 0.001)))
    except dist.DistStoreError:
        raise TimeoutError(f"nothing posted under {key} in {timeout_s:.0f} s") from None
    return store.get(key).decode()


def forget_posts(keys: list[str]) -> None:
    """Delete posted values (a long run posts at every checkpoint: the store stays small)."""
    store = _default_store()
    for key in keys:
        store.delete_key(key)


def _default_store():
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def rank0_decides(decide: Callable[[], T], errors: tuple[type[Exception], ...]) -> T:
    """`decide()` run on rank 0 alone, its result on every rank. An error of one of the
    `errors` classes (each built from one message) is raised on every rank, not only on rank 0:
    a failure there must not leave the other ranks waiting in the next collective."""
    outcome = None
    if dist.get_rank() == 0:
        try:
            outcome = (-1, decide())
        except errors as e:
            outcome = (next(i for i, cls in enumerate(errors) if isinstance(e, cls)), str(e))
    kind, value = from_rank0(outcome)
    if kind >= 0:
        raise errors[kind](value)
    return value
