"""Choosing between the fused kernels and the reference: "auto" falls back with one log line where
the kernels cannot run, "fused" refuses to start there, "reference" never uses them."""

import logging

import pytest
import torch

from megagoku.ops import KernelsUnavailable, Rope3D, describe, fused, rms_norm, use_fused
from tests.ops.kernels import extension


@pytest.fixture
def fresh_choice():
    use_fused.cache_clear()
    yield
    use_fused.cache_clear()


@pytest.fixture
def not_built(monkeypatch, fresh_choice):
    """As if megagoku.ops._C had failed to build."""
    monkeypatch.setattr(fused, "_C", None)
    monkeypatch.setattr(fused, "_IMPORT_ERROR", "ModuleNotFoundError: No module named '_C'")


def is_fused(out: torch.Tensor) -> bool:
    return type(out.grad_fn).__name__.startswith("Fused")


def test_auto_falls_back_to_the_reference_with_one_log_line(not_built, caplog):
    x = torch.randn(4, 3, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    positions = torch.randint(0, 5, (4, 3))
    with caplog.at_level(logging.WARNING, logger="megagoku.ops.dispatch"):
        outs = [rms_norm(x, w, 1e-6, "auto"), Rope3D(positions, (2, 2, 4), 100.0, "auto")(x),
                rms_norm(x, w, 1e-6, "auto")]
    assert not any(is_fused(o) for o in outs)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "using the PyTorch reference ops" in lines[0] and "not importable" in lines[0]
    assert describe("auto", "cpu") == "PyTorch reference ops"


def test_fused_is_refused_where_the_kernels_cannot_run(not_built):
    with pytest.raises(KernelsUnavailable, match="megagoku.ops._C is not importable"):
        use_fused("fused", "cpu")
    assert use_fused("reference", "cpu") is False


def test_a_cpu_only_build_says_so_for_cuda(fresh_choice, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(fused, "_C", SimpleNamespace(built_with_cuda=lambda: False))
    with pytest.raises(KernelsUnavailable, match="built without CUDA"):
        use_fused("fused", "cuda")
    assert use_fused("auto", "cuda") is False


def test_the_built_kernels_are_used_by_default(fresh_choice):
    extension()
    x = torch.randn(4, 8, requires_grad=True)
    assert is_fused(rms_norm(x, None, 1e-6))
    assert not is_fused(rms_norm(x, None, 1e-6, "reference"))
    assert describe("auto", "cpu").startswith("fused csrc kernels (CPU ")


def test_training_with_fused_kernels_that_cannot_run_stops_before_work(not_built, tmp_path):
    from megagoku.config import ConfigError, load_training_config
    from megagoku.train.trainer import train
    from tests.train.test_trainer import ROOT

    cfg = load_training_config(ROOT / "configs/tiny.yaml", ["model.kernels=fused"])
    with pytest.raises(ConfigError, match=r"^cfg.yaml: model.kernels: fused kernels cannot run "
                                          r"on cpu: megagoku.ops._C is not importable"):
        train(cfg, tmp_path / "run", source="cfg.yaml")
    assert not (tmp_path / "run").exists()
