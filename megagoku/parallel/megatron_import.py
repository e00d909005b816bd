"""megatron-core, imported quietly and without compiling its own fusions.

Importing megatron-core decorates its fused kernels (bias-GeLU, GeGLU, SwiGLU, bias-dropout,
cross-entropy, MoE routing: `megatron.core.jit.jit_fuser`, which is `torch.compile` on torch >=
2.2) as their modules load, and `torch.compile` imports torch's dynamo and inductor to do it: the
larger part of megatron's import, paid by every process that starts (launched ranks, the CLI,
each test's subprocesses). We call none of those kernels (the block's ops are ours: `models/`,
`ops/`; from megatron we use the tensor-parallel layers, mappings and `parallel_state`, which
none of them touch). megatron's own switch, `megatron.core.jit.disable_jit_fuser`, cannot help:
it lives in the package whose import does the decorating. So while megatron's package loads,
`torch.compile` is the identity (megatron's `jit_fuser` keeps it: its kernels stay eager, the
same maths; `uncompiled_import`), and torch's own is back the moment the import ends.

megatron-core also warns at import that Transformer Engine and Apex are missing (GPU-only
accelerators it falls back from); those warnings are silenced here, nothing else.
"""

from __future__ import annotations

import contextlib
import warnings

from megagoku.parallel.uncompiled_import import uncompiled_import


@contextlib.contextmanager
def megatron_import():
    """Import megatron-core modules inside (the first import loads the whole package)."""
    with uncompiled_import(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
