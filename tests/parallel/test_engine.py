"""DeepSpeed's configuration as `parallel/engine.py` writes it."""


def test_deepspeed_reads_every_bucket_key_as_the_one_knob():
    """The keys `deepspeed_config` writes are DeepSpeed's own (a renamed key would be ignored
    with a warning, and the plan would no longer be the truth)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from megagoku.parallel.engine import deepspeed_config

    bucket = 12_345
    zero3 = DeepSpeedZeroConfig(**deepspeed_config(3, 1.0, bucket)["zero_optimization"])
    assert (zero3.reduce_bucket_size, zero3.allgather_bucket_size, zero3.prefetch_bucket_size,
            zero3.max_live_parameters, zero3.max_reuse_distance) == (bucket,) * 5
    zero2 = DeepSpeedZeroConfig(**deepspeed_config(2, 1.0, bucket)["zero_optimization"])
    assert (zero2.reduce_bucket_size, zero2.allgather_bucket_size) == (bucket, bucket)
    assert deepspeed_config(0, 1.0, bucket)["zero_optimization"] == {"stage": 0}
