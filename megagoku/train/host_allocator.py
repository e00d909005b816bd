"""Host memory that training frees goes back to the operating system.

glibc serves an allocation below its mmap threshold from its heap and keeps the memory when it
is freed, for reuse; the threshold rises by itself, up to 32 MB, each time a larger block is
freed. A CPU run's tensors of 1-32 MB (weight gradients, DeepSpeed's buckets, optimizer
temporaries) therefore stay resident after use, and the heap fragments: measured at Goku-2B's
width on 4 ranks (BENCHMARKS.md, "Full width"), a rank's peak was 16% higher than with the
threshold fixed, and what it held grew from step to step. Fixing the threshold at 1 MB serves those
tensors from their own mappings, returned when freed, so resident memory follows what training
holds (and what `info --plan` counts). The demo's many small tensors stay in the heap. What it
costs in speed: BENCHMARKS.md, "Full width". Only the CPU process's own allocator is touched:
nothing changes for tensors on a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
THRESHOLD_BYTES = 1 << 20


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 1 MB for this process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to fix
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
