"""A model that cannot fit the device is refused before it is built (issue 22, case 14): the
config check counts its parameters on the meta device and compares the bytes of its training
state with the device's memory."""

from pathlib import Path

import pytest

from megagoku.config import ConfigError, load_training_config
from megagoku.train.memory_plan import device_memory_bytes, state_bytes
from megagoku.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def test_a_huge_model_is_one_config_error_before_any_allocation(tmp_path):
    cfg = load_training_config(ROOT / "configs/tiny.yaml", [
        "model.hidden_size=1000000", "model.num_heads=31250", "model.rope_split=[10,10,12]"])
    with pytest.raises(ConfigError) as error:
        train(cfg, tmp_path / "run", source="cfg.yaml")
    message = str(error.value)
    assert message.startswith("cfg.yaml: model: ") and "\n" not in message
    assert "GiB for weights, gradients, AdamW and the EMA, but the cpu has" in message
    assert not (tmp_path / "run").exists()


def test_state_bytes_shard_as_zero_does():
    assert sum(state_bytes(100, 1, 0)) == 1600  # fp32 weights 4 + grads 4 + AdamW 8
    assert state_bytes(100, 4, 3) == (100.0, 100.0, 200.0)
    assert device_memory_bytes(__import__("torch").device("cpu")) > 2 ** 30
