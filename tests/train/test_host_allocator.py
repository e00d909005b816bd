"""CPU training returns freed host memory to the OS: glibc's mmap threshold is fixed, so a freed
tensor above 1 MB leaves the process's resident memory (train/host_allocator.py)."""

import ctypes
import ctypes.util

import torch

from megagoku.train.host_allocator import return_freed_memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_freed_tensor_leaves_resident_memory():
    assert return_freed_memory()  # glibc here
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    before = _rss()
    for _ in range(3):  # 24 MB each: below glibc's own dynamic threshold (up to 32 MB)
        t = torch.ones(6 * 1024 * 1024)
        assert _rss() - before > 20e6  # touched: resident
        del t
        assert _rss() - before < 4e6  # freed: given back
