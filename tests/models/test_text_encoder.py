import pytest
import torch

from megagoku.models import TextEncoder
from megagoku.models.text_encoder import resolve_encoder_path


def test_builtin_sentence_encoder_gives_token_features_with_own_lengths():
    before = torch.get_rng_state()
    enc = TextEncoder("builtin:all-minilm-l6-v2", max_length=16)
    # Loading it draws nothing from the global RNG: the trainer loads it at its first use,
    # which is another point of the RNG in a resumed run than in an uninterrupted one.
    assert torch.equal(torch.get_rng_state(), before)
    assert enc.dim == 384
    feats, cu = enc.encode(["a red circle", "a blue square moving left", ""])
    lengths = (cu[1:] - cu[:-1]).tolist()
    assert lengths[0] < lengths[1] and lengths[2] == 2  # [CLS] [SEP] for the empty caption
    assert feats.shape == (sum(lengths), 384)
    # Real pretrained weights: related captions are closer than unrelated ones.
    pooled = [f.mean(0) for f in feats.split(lengths)]
    near = torch.cosine_similarity(pooled[0], pooled[1], dim=0)
    again, _ = enc.encode(["a red circle"])
    torch.testing.assert_close(again, feats[: lengths[0]])
    far_feats, _ = enc.encode(["quarterly tax filing deadline"])
    assert near > torch.cosine_similarity(pooled[0], far_feats.mean(0), dim=0)


def test_t5_directory_loads_through_the_same_path(tmp_path):
    """FLAN-T5 on clusters: a local T5 directory loads as T5EncoderModel. Built here tiny and
    random, with the built-in tokenizer."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(resolve_encoder_path("builtin:all-minilm-l6-v2"))
    cfg = T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                   num_decoder_layers=1, num_heads=4, decoder_start_token_id=0)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    before = torch.get_rng_state()
    enc = TextEncoder(str(tmp_path), max_length=8)
    assert torch.equal(torch.get_rng_state(), before)  # loading it draws nothing
    assert type(enc.model).__name__ == "T5EncoderModel" and enc.dim == 32
    feats, cu = enc.encode(["a red circle moving left and then far away right"])
    assert feats.shape == (8, 32) and cu.tolist() == [0, 8]  # truncated to max_length


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text.encoder: .*\(no config.json\)"):
        TextEncoder(str(tmp_path / "nope"))


def test_cache_is_bounded_and_results_do_not_depend_on_it():
    enc = TextEncoder("builtin:all-minilm-l6-v2", max_length=16, cache_size=2)
    captions = ["a red circle", "a green square", "a blue triangle moving up"]
    first, cu = enc.encode(captions)
    assert len(enc._cache) == 2
    again, cu2 = enc.encode(list(reversed(captions)))
    pieces = first.split((cu[1:] - cu[:-1]).tolist())
    torch.testing.assert_close(again, torch.cat(list(reversed(pieces))), atol=1e-5, rtol=1e-5)


def test_a_captions_features_do_not_depend_on_its_batch():
    # A resumed run starts with an empty cache and encodes captions in other company than the
    # uninterrupted run did: the features must be the same to the last bit.
    others = ["a green square moving up", "a blue triangle moving left", "a yellow circle",
              "a much longer caption about a red square that moves slowly to the right", "x"]
    alone, _ = TextEncoder("builtin:all-minilm-l6-v2", 24, cache_size=0).encode(["a red circle"])
    batched, cu = TextEncoder("builtin:all-minilm-l6-v2", 24).encode(others + ["a red circle"])
    assert torch.equal(batched[cu[-2]:cu[-1]], alone)
