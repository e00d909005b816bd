"""Imports that would `torch.compile` functions as they load, done with `torch.compile` the
identity: their functions stay eager, and torch's dynamo and inductor are not imported.

`torch.compile(fn)` imports dynamo and inductor (~2 s per process on these CPUs) even when the
function is never called. megatron-core (`megatron_import`) and DeepSpeed (`deepspeed_import`)
both decorate kernels of theirs that we never call, at import: every launched rank, CLI run and
test subprocess paid for it. torch's own `torch.compile` is back the moment the import ends, so
our own compile (`parallel.compile`) is untouched.
"""

from __future__ import annotations

import contextlib

import torch


def _eager(model=None, **_options):
    """`torch.compile`'s signature, compiling nothing: `@torch.compile` and `torch.compile(fn)`
    return fn, `@torch.compile(...)` returns the identity decorator."""
    return model if model is not None else (lambda fn: fn)


@contextlib.contextmanager
def uncompiled_import():
    """Import inside: what the imported modules compile as they load stays eager."""
    compile_ = torch.compile
    torch.compile = _eager
    try:
        yield
    finally:
        torch.compile = compile_
