import ast

from megagoku.parallel.deepspeed_import import import_deepspeed
from tests.fresh_process import check_in_fresh_process
from tests.test_architecture import PACKAGE


def test_deepspeed_builds_no_shared_memory_comm_op():
    """DeepSpeed's own decision (`build_shm_op`, called as its torch backend starts) sees the op
    switched off: None, nothing compiled. Without the switch it JIT-compiles the op (or loads a
    cached build) and returns the module."""
    import_deepspeed()
    from deepspeed.comm.torch import build_shm_op

    assert build_shm_op() is None


def test_the_package_imports_deepspeed_only_through_import_deepspeed():
    """Every entry into DeepSpeed (`import deepspeed`) goes through `import_deepspeed`, so no
    process starts a DeepSpeed process group with the op still on."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "deepspeed_import.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "deepspeed" for a in node.names):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offences, "import deepspeed outside parallel/deepspeed_import.py: " + \
        ", ".join(offences)


def test_the_zero_engines_optimizer_check_compiles_nothing():
    """In a fresh process: the module a ZeRO engine's optimizer check imports (DeepSpeed's Muon,
    whose kernels are `torch.compile`d as they load) is loaded without torch's inductor, and
    `torch.compile` is torch's own afterwards. Without `import_deepspeed` loading it uncompiled
    first, that import pulls in dynamo and inductor."""
    check = ("import sys, torch\n"
             "compile_ = torch.compile\n"
             "from megagoku.parallel.deepspeed_import import import_deepspeed\n"
             "import_deepspeed()\n"
             "from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam\n"
             "assert 'torch._inductor' not in sys.modules, 'DeepSpeed imported torch._inductor'\n"
             "assert torch.compile is compile_, 'torch.compile was not given back'\n")
    check_in_fresh_process(check)
