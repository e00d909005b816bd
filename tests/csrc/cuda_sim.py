"""Builds `megagoku_cuda_sim`: the extension's bindings with the CUDA kernels of csrc/cuda/
compiled for cuda_sim (csrc/cuda_sim/sim.h), a CUDA device simulated on the CPU, so that CI (no
GPU) runs the real CUDA kernels: every call of the module goes to them, on CPU tensors.

The kernel sources are copied with the two pieces of CUDA syntax a C++ compiler cannot take
rewritten: `kernel<<<grid, block, shared, stream>>>(args)` becomes
`::cuda_sim::launch(kernel, grid, block, shared, stream)(args)` and
`extern __shared__ unsigned char name[];` a pointer to the launch's dynamic shared memory. The
build (under a minute, once per change of the sources; the source lists are setup.py's) goes to
build/cuda_sim/<hash of the sources>.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def setup_sources(name: str) -> list[str]:
    """setup.py's list `name` (CPU_SOURCES, CUDA_SOURCES), read without running setup.py."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"setup.py has no {name}")


LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;{}()]*?>)?)<<<")
DYNAMIC_SHARED = re.compile(r"extern __shared__ unsigned char (\w+)\[\];")


def rewrite(source: str) -> str:
    """A .cu or .cuh source as C++ for cuda_sim."""
    out = DYNAMIC_SHARED.sub(r"unsigned char* \1 = ::cuda_sim::dynamic_shared();", source)
    out = LAUNCH.sub(r"::cuda_sim::launch(\1, ", out)
    out = out.replace(">>>(", ")(")
    if "<<<" in out or ">>>" in out:
        raise ValueError("cuda_sim: a kernel launch the rewrite does not know")
    return out


def sources_digest() -> str:
    h = hashlib.sha256()
    files = sorted(p for d in ("cuda", "cuda_sim", "kernels", "cpu", "torch")
                   for p in (CSRC / d).iterdir() if p.is_file())
    for path in files + [ROOT / "setup.py", Path(__file__)]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def write_if_changed(path: Path, text: str) -> None:
    """Untouched when the same: a newer copy would make ninja recompile what includes it."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def build(verbose: bool = False):
    """The compiled `megagoku_cuda_sim` module (built on the first call after a change)."""
    from torch.utils.cpp_extension import load

    out = ROOT / "build" / "cuda_sim" / sources_digest()
    (out / "cuda").mkdir(parents=True, exist_ok=True)
    (out / "kernels").mkdir(exist_ok=True)
    for path in (CSRC / "kernels").iterdir():
        write_if_changed(out / "kernels" / path.name, path.read_text())
    cuda_sources = setup_sources("CUDA_SOURCES")
    compiled = []
    for path in sorted((CSRC / "cuda").iterdir()):
        # Renamed: the CPU kernels of the same name would make the same object file.
        target = out / "cuda" / (path.stem + ("_cuda.cpp" if path.suffix == ".cu" else path.suffix))
        write_if_changed(target, rewrite(path.read_text()))
        if f"cuda/{path.name}" in cuda_sources:
            compiled.append(str(target))
    flags = ["-O2", "-g0", "-std=c++17", "-fopenmp", "-DMEGAGOKU_WITH_CUDA", "-DMEGAGOKU_CUDA_SIM",
             f"-I{CSRC / 'cuda_sim'}", "-Wno-unknown-pragmas"]
    sources = [str(CSRC / s) for s in setup_sources("CPU_SOURCES")] + compiled
    return load(name="megagoku_cuda_sim", sources=sources, extra_cflags=flags,
                extra_ldflags=["-fopenmp"], build_directory=str(out), verbose=verbose)


def build_probe() -> Path:
    """tests/csrc/cuda_sim_probe.cu compiled for cuda_sim as a plain shared library (for ctypes:
    no torch headers, a second or two)."""
    source = Path(__file__).with_name("cuda_sim_probe.cu")
    digest = hashlib.sha256(source.read_bytes() + (CSRC / "cuda_sim" / "sim.h").read_bytes()
                            + Path(__file__).read_bytes()).hexdigest()[:16]
    out = ROOT / "build" / "cuda_sim" / f"probe-{digest}"
    library = out / "probe.so"
    if not library.exists():
        out.mkdir(parents=True, exist_ok=True)
        cpp = out / "probe.cpp"
        cpp.write_text(rewrite(source.read_text()))
        partial = out / f"probe.so.{os.getpid()}"
        subprocess.run([os.environ.get("CXX", "c++"), "-O1", "-std=c++17", "-shared", "-fPIC",
                        f"-I{CSRC / 'cuda_sim'}", str(cpp), "-o", str(partial)], check=True,
                       capture_output=True, text=True)
        partial.rename(library)
    return library
