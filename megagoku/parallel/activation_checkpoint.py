"""Selective activation checkpointing, applied after the model is built (torchtitan's order).

A policy names what of a block is recomputed in the backward pass instead of kept: `attention`
(self- and cross-attention, whose activations grow with the sequence and the head count), `mlp`
(the 4x-wide hidden layer), `full` (the whole block: only its input is kept), or `none`;
`every = k` applies it to blocks 0, k, 2k, ... so memory can be traded for compute in steps.

The wrapped module's `forward` is replaced in place: parameter names and checkpoints are unchanged.
torch's non-reentrant checkpoint restores the CPU and CUDA RNG states for the recomputation, and
megatron's collectives inside a wrapped part simply run again (their backward is unchanged).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

POLICIES = {"none": (), "attention": ("attn", "cross_attn"), "mlp": ("mlp",), "full": ("",)}


def _checkpointed(module: nn.Module) -> None:
    forward = module.forward

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():  # inference: nothing to save, nothing to recompute
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = run


def apply_activation_checkpointing(blocks: nn.ModuleList, policy: str, every: int = 1) -> int:
    """Wrap the policy's parts of every `every`-th block; returns how many modules were wrapped."""
    if policy not in POLICIES:
        raise ValueError(f"parallel.activation_checkpointing: unknown policy {policy!r}")
    wrapped = 0
    for index, block in enumerate(blocks):
        if index % every:
            continue
        for name in POLICIES[policy]:
            _checkpointed(block.get_submodule(name) if name else block)
            wrapped += 1
    return wrapped
