"""CPU training returns freed host memory to the OS: glibc's mmap threshold is fixed, so a freed
tensor above 1 MB leaves the process's resident memory (train/host_allocator.py). Measured in a
fresh process: in a long-lived one, large free chunks already in the heap serve requests before
any new mapping (the threshold decides only for memory the heap does not have)."""

import subprocess
import sys

CHECK = """
import torch
from megagoku.train.host_allocator import return_freed_memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

if {fix}:
    assert return_freed_memory()  # glibc here
before = rss()
kept = []
for _ in range(3):  # 24 MB each: below glibc's own dynamic threshold (up to 32 MB)
    t = torch.ones(6 * 1024 * 1024)
    assert rss() - before > 20e6  # touched: resident
    del t
    kept.append(rss() - before)
print(max(kept[1:]))
"""


def resident_after_free(fix: bool) -> int:
    out = subprocess.run([sys.executable, "-c", CHECK.format(fix=fix)], capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return int(out.stdout)


def test_a_freed_tensor_leaves_resident_memory():
    assert resident_after_free(fix=True) < 4e6  # given back
    assert resident_after_free(fix=False) > 20e6  # glibc's default keeps it: the reason
