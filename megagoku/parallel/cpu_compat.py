"""The one place where megatron-core is adapted to machines without CUDA.

megatron-core 0.16 allocates communication buffers with `device=torch.cuda.current_device()` on
paths we use: sequence-parallel all-gather / reduce-scatter (`tensor_parallel/mappings.py`,
`tensor_parallel/layers.py` backward) and its global memory buffer (`core/utils.py`). Without CUDA
that call raises. When (and only when) torch sees no GPU, `install()` makes it name the CPU, so
those buffers land beside the gloo tensors they serve; everything else is megatron's own code.

Its advice to set CUDA_DEVICE_MAX_CONNECTIONS=1 (a CUDA stream setting) is silenced on the CPU.
Nothing is changed on a machine with a GPU: there the real CUDA device is what megatron wants.
"""

from __future__ import annotations

import warnings

import torch

_installed = False


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def install() -> bool:
    """Redirect `torch.cuda.current_device` to the CPU if CUDA is absent. Returns whether the
    redirection is active. Idempotent."""
    global _installed
    if torch.cuda.is_available():
        return False
    if not _installed:
        torch.cuda.current_device = _cpu_device
        warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS")
        _installed = True
    return True
