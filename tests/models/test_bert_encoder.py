"""models/bert_encoder.py against transformers' own BertModel and tokenizer, on the embedded
encoder's real weights: the same ids, the same features to the last bit."""

import json
import shutil

import pytest
import torch

from megagoku.models.bert_encoder import BertEncoder, BertTokenizer, is_plain_bert
from megagoku.models.text_encoder import resolve_encoder_path
from tests.fresh_process import check_in_fresh_process

BUILTIN = "builtin:all-minilm-l6-v2"
CAPTIONS = ["a red circle moving left", "", "A BLUE square, moving up-right; quickly!! " * 8,
            "héllo wörld naïve café", "green triangle", "x"]


@pytest.mark.parametrize("max_length", [32, 8])
def test_ids_and_features_equal_transformers_bit_for_bit(max_length):
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder_path(BUILTIN)
    theirs = AutoTokenizer.from_pretrained(path, local_files_only=True)(
        CAPTIONS, padding="max_length", truncation=True, max_length=max_length,
        return_tensors="pt")
    ours = BertTokenizer(path, max_length)(CAPTIONS)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])  # truncated, [CLS]/[SEP], padded
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    reference = AutoModel.from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        expected = reference(**{k: theirs[k] for k in ("input_ids", "attention_mask")})
        got = BertEncoder.load(path).eval()(ours["input_ids"], ours["attention_mask"])
    assert torch.equal(got, expected.last_hidden_state)


def test_the_embedded_encoder_starts_without_transformers():
    """In a fresh process: encoding with the built-in encoder never imports transformers (its
    import is what this file saves every process)."""
    check = ("import sys\n"
             "from megagoku.models import TextEncoder\n"
             f"TextEncoder({BUILTIN!r}, 16).encode(['a red circle'])\n"
             "assert 'transformers' not in sys.modules, 'transformers was imported'\n")
    check_in_fresh_process(check)


def test_what_this_file_does_not_implement_goes_to_transformers(tmp_path):
    path = resolve_encoder_path(BUILTIN)
    assert is_plain_bert(path)
    meta = json.loads((path / "config.json").read_text())
    for change in ({"position_embedding_type": "relative_key"}, {"hidden_act": "relu"},
                   {"model_type": "roberta"}, {"is_decoder": True}):
        (tmp_path / "config.json").write_text(json.dumps({**meta, **change}))
        shutil.copy(path / "tokenizer.json", tmp_path / "tokenizer.json")
        (tmp_path / "model.safetensors").write_bytes(b"")
        assert not is_plain_bert(tmp_path), change
    (tmp_path / "config.json").write_text(json.dumps(meta))
    assert is_plain_bert(tmp_path)
    (tmp_path / "model.safetensors").unlink()  # a pickled checkpoint only: not read here
    assert not is_plain_bert(tmp_path)


def test_weights_of_another_model_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = resolve_encoder_path(BUILTIN)
    shutil.copy(path / "config.json", tmp_path / "config.json")
    save_file({"embeddings.word_embeddings.weight": torch.zeros(2, 2)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors: not a BERT encoder's weights "
                                         r"\(no embeddings.LayerNorm.bias\)"):
        BertEncoder.load(tmp_path)
