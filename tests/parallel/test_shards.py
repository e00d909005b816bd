"""ZeRO-3 construction (`parallel/shards.zero3_construction`) builds float32 partitions whatever
the CPU's half-precision support."""

import torch
from torch import nn

from megagoku.parallel.deepspeed_import import import_deepspeed
from megagoku.parallel.shards import zero3_construction
from megagoku.parallel.state import ensure_single_process_groups


def test_zero3_partitions_are_float32_on_a_cpu_without_fp16(monkeypatch):
    # DeepSpeed 0.19.8 gave bfloat16 partitions for an explicit float32 on such a CPU (a machine
    # of ours whose oneDNN has no fp16): every ZeRO-3 run there failed at its first matmul.
    accelerator = import_deepspeed().accelerator.get_accelerator()
    monkeypatch.setattr(accelerator, "is_fp16_supported", lambda: False)
    ensure_single_process_groups()
    with zero3_construction():
        layer = nn.Linear(4, 3)
    assert layer.weight.ds_tensor.dtype == torch.float32
    assert layer.weight.ds_tensor.numel() == 12
