"""What the fused-kernel tests share: the built extension (a missing build fails the tests: it is
part of the product), the CPU instruction sets this machine can run, and poisoned buffers."""

import pytest
import torch

from megagoku.ops import fused


def extension():
    reason = fused.unavailable_reason("cpu")
    assert reason is None, reason
    return fused._C


def cpu_isas() -> list[str]:
    """Every compiled copy of the CPU row bodies this CPU can run (generic always)."""
    C = extension()
    before = C.cpu_isa()
    runnable = []
    for isa in ("generic", "avx2", "avx512"):
        try:
            C.set_cpu_isa(isa)
            runnable.append(isa)
        except RuntimeError:
            pass
    C.set_cpu_isa(before)
    return runnable


@pytest.fixture(params=cpu_isas() if fused._C is not None else ["generic"])
def cpu_isa(request):
    """Run the test once per instruction set, then restore the default choice."""
    C = extension()
    before = C.cpu_isa()
    C.set_cpu_isa(request.param)
    yield request.param
    C.set_cpu_isa(before)


def poisoned(shape, dtype) -> torch.Tensor:
    """An output buffer full of NaN: an element the kernel does not write stays NaN."""
    return torch.full(shape, float("nan"), dtype=dtype)


TOLERANCE = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=2e-5, rtol=2e-5),
             torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
