"""Shared fixtures: one-process megatron groups, and a small random model config."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from megagoku.config import ModelConfig  # noqa: E402
from megagoku.parallel import ensure_single_process_groups  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def process_groups():
    ensure_single_process_groups()


def small_model_config(**overrides) -> ModelConfig:
    fields = dict(name="test", depth=2, hidden_size=64, num_heads=4, in_channels=3,
                  patch_size=(1, 2, 2), text_dim=24, rope_split=(4, 6, 6))
    fields.update(overrides)
    return ModelConfig(**fields)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the zero initialisation (adaLN-Zero, zero output layer) by random weights, so that
    every path of the model affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return model
