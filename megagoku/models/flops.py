"""FLOPs of the Goku Transformer, counted from its shape: what `megagoku info` reports and what
the trainer's MFU divides by the peak."""

from __future__ import annotations

from megagoku.config import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int, text_len: int) -> dict[str, float]:
    """Multiply-accumulates x 2 of one sample of `seq_len` tokens with a `text_len` caption,
    divided by seq_len. Per-sample work (adaLN, text keys/values) is spread over the tokens."""
    d, p, td = cfg.hidden_size, cfg.patch_dim, cfg.text_dim
    hidden = int(d * cfg.mlp_ratio)
    per_block = (
        2 * d * 3 * d + 2 * d * d  # self-attention projections
        + 2 * 2 * seq_len * d  # scores and weighted values over the sample
        + 2 * d * d + 2 * d * d  # cross-attention query and output projections
        + 2 * 2 * text_len * d  # cross-attention scores and values
        + 2 * text_len * td * 2 * d / seq_len  # caption keys/values, once per sample
        + 2 * 2 * d * hidden  # MLP
        + 2 * d * 6 * d / seq_len  # adaLN, once per sample
    )
    embed = 2 * p * d * (2 if cfg.image_condition else 1)  # I2V: the first frame's patches too
    forward = embed + cfg.depth * per_block + 2 * d * p + 2 * d * 2 * d / seq_len
    return {"forward": forward, "train": 3 * forward}


def pack_train_flops(cfg: ModelConfig, sample_tokens: list[int], text_tokens: list[int]) -> float:
    """FLOPs of one training step (forward + backward) over a pack: each sample attends within
    itself, so attention is counted per sample."""
    return sum(n * flops_per_token(cfg, n, t)["train"] for n, t in zip(sample_tokens, text_tokens))
