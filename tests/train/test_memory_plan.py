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
    assert state_bytes(100, 4, 3) == (100.0, 100.0, 300.0)  # + DeepSpeed's fp32 master copy
    assert device_memory_bytes(__import__("torch").device("cpu")) > 2 ** 30


def test_the_plan_counts_the_peak_beyond_the_steady_state():
    from megagoku.config import ModelConfig
    from megagoku.train.memory_plan import plan

    cfg = ModelConfig(name="p", depth=4, hidden_size=256, num_heads=4, text_dim=64,
                      rope_split=(16, 24, 24))
    bucket = 10_000  # DeepSpeed's buckets, far smaller than the model, as at full size
    zero0 = plan(cfg, 4, zero_stage=0, seq_len=64, device="cpu", bucket_elements=bucket)
    zero3 = plan(cfg, 4, zero_stage=3, seq_len=64, device="cpu", bucket_elements=bucket)
    # the EMA is sharded as the weights are
    assert zero0.ema_bytes == zero0.weights_bytes and zero3.ema_bytes == zero3.weights_bytes
    assert zero3.ema_bytes * 4 == zero0.ema_bytes
    for p in (zero0, zero3):
        assert p.steady_bytes == p.total_bytes + p.ema_bytes
        assert p.peak_bytes >= p.steady_bytes * (1 + p.fragmentation) - 1
        assert p.peak_bytes >= p.startup_peak_bytes
    assert zero3.peak_bytes < zero0.peak_bytes / 2
    # the snapshot's host copies are in a CPU run's peak, not in a GPU's
    gpu = plan(cfg, 4, zero_stage=3, seq_len=64, device="cuda", bucket_elements=bucket)
    assert zero3.snapshot_bytes == gpu.snapshot_bytes > 0
    assert zero3.training_peak_bytes - gpu.training_peak_bytes == zero3.snapshot_bytes
    # DeepSpeed's buckets under ZeRO: the gradient bucket, and under ZeRO-3 the gathered
    # parameters (the bucket plus the largest tensor)
    assert zero3.bucket_bytes == 4 * bucket
    assert zero0.bucket_bytes == zero0.gathered_bytes == 0
    assert zero3.gathered_bytes == 4 * bucket + zero3.snapshot_gather_bytes // 2
    # rank 0's copies of the whole model for samples and evaluations
    sampling = plan(cfg, 4, zero_stage=3, seq_len=64, device="cpu", bucket_elements=bucket,
                    rank0_copies=2)
    assert sampling.rank0_copies_bytes == 2 * 4 * zero0.params_per_gpu
    assert sampling.peak_bytes - zero3.peak_bytes == pytest.approx(
        sampling.rank0_copies_bytes * (1 + sampling.fragmentation), abs=2)
    whole = plan(cfg, 4, zero_stage=3, seq_len=64, device="cpu")  # the default bucket: 5e7
    assert whole.gathered_bytes >= 4 * whole.params_per_gpu  # the model is gathered whole
    assert whole.peak_bytes > zero3.peak_bytes
