import pytest
import torch

from megagoku.config import load_training_config
from megagoku.config.loader import ConfigError
from megagoku.models.pack_context import build_pack_context
from megagoku.parallel import SequenceShard


def test_uneven_pack_is_padded_never_dropped():
    x = torch.arange(51).reshape(51, 1)
    shards = [SequenceShard(4, r, 4) for r in range(4)]
    pieces = [s.slice(x, fill=-1) for s in shards]
    assert [p.shape[0] for p in pieces] == [13, 13, 13, 13]
    joined = torch.cat(pieces)[:, 0]
    assert joined[:51].tolist() == list(range(51)) and joined[51:].tolist() == [-1]


def test_megatron_sp_pads_to_ulysses_times_tp():
    shard = SequenceShard(2, 1, 2 * 2)
    assert shard.padded_length(51) == 52 and shard.bounds(51) == (26, 52)


def test_pack_context_isolates_padding_and_keeps_samples_on_their_tokens():
    cu = torch.tensor([0, 24, 39, 51], dtype=torch.int32)
    text_cu = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
    ctx = build_pack_context(cu, text_cu, SequenceShard(2, 1, 4), tp_rank=1, tp_split=2)
    # self-attention: three samples plus a pad segment of one token at the end
    assert ctx.self_layout.cu_seqlens.tolist() == [0, 24, 39, 51, 52]
    # rank 1 holds tokens 26..51: none of sample 0, 13 of sample 1, 12 + 1 pad of sample 2
    assert ctx.query_layout.cu_seqlens.tolist() == [0, 0, 13, 26]
    assert ctx.residual_segment.tolist() == [2] * 13  # its TP half: tokens 39..51


def test_heads_must_split_over_tp_times_ulysses():
    with pytest.raises(ConfigError, match="parallel.ulysses: 4 heads cannot be split over"):
        load_training_config(None, ["parallel.tensor_parallel=2", "parallel.ulysses=4"])
    with pytest.raises(ConfigError, match="parallel.zero_stage"):
        load_training_config(None, ["parallel.zero_stage=4"])
