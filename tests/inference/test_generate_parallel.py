"""Sampling split over two gloo ranks (torchrun): a video sampled with Ulysses sequence
parallelism, or with tensor parallelism, matches the one-process sample."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megagoku.train.trainer import train
from tests.distributed.launch import free_port
from tests.train.test_resume import config

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ["sample", "--prompt", "a red circle moving left", "--frames", "8", "--steps", "3",
          "--seed", "3", "--upscale", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(config(), path)
    return path


def sample(run_dir: Path, out: Path, *launch: str, extra=()) -> np.ndarray:
    cmd = [sys.executable, *launch, "-m", "megagoku", *SAMPLE, "--checkpoint", str(run_dir),
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HOME": str(Path.home()), "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--ulysses", "--tensor-parallel"])
def test_two_rank_sampling_matches_one_process(run_dir, tmp_path, flag):
    alone = sample(run_dir, tmp_path / "one.png")
    torchrun = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(free_port())]
    split = sample(run_dir, tmp_path / "two.png", *torchrun, extra=(flag, "2"))
    assert alone.shape == split.shape == (16, 8 * 16 + 7 * 2, 3)  # 8 frames side by side
    assert np.abs(alone - split).max() <= 2  # float summation order only
