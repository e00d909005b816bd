"""DeepSpeed, imported once the way every run needs it.

On CPU, DeepSpeed's torch backend builds a shared-memory all-reduce op as its first process group
starts: a JIT C++ compile (~35 s on 2 cores, a compiler on every node, the first time per
install) for an op only its inference all-reduce (`deepspeed.comm.inference_all_reduce`, module
injection) calls. Training never calls it, so it is marked incompatible before anything of
DeepSpeed starts: `build_shm_op` then returns None and nothing is compiled. (DeepSpeed keeps the
probe's result in one module-level dict so that edits to it persist.)

The first ZeRO engine asks whether its optimizer is one ZeRO supports, and to ask, DeepSpeed
imports its Muon optimizer, whose kernels are decorated with `torch.compile` as they load
(`deepspeed.runtime.zero.muon`): dynamo and inductor imported, ~2 s per launched rank, for an
optimizer we never use. That module is imported here first, uncompiled (`uncompiled_import`);
DeepSpeed's later import finds it loaded.
"""

from __future__ import annotations

from megagoku.parallel.uncompiled_import import uncompiled_import

SHARED_MEMORY_COMM_OP = "deepspeed_shm_comm"


def import_deepspeed():
    """The `deepspeed` module, its CPU shared-memory comm op switched off and its Muon optimizer
    loaded uncompiled."""
    import deepspeed

    deepspeed.ops.__compatible_ops__[SHARED_MEMORY_COMM_OP] = False
    with uncompiled_import():
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    return deepspeed
