"""A BERT encoder (post-LayerNorm, absolute positions, GELU) and its WordPiece tokenizer, read
straight from a Hugging Face directory's `config.json`, `model.safetensors` and
`tokenizer.json`: what the embedded text encoder (all-MiniLM-L6-v2) is, without transformers.

Why not transformers for it: importing transformers and building a model through it costs
~1.6 s per process on these CPUs (its import pulls in torch's dynamo and DTensor, and indexes
every model it ships), and every process that trains, samples or evaluates on the built-in data
encodes captions: launched ranks, CLI runs, the tests' subprocesses. Through this file the
encoder starts in ~0.2 s (its tokenizer, the model and the stored weights). It is held to
transformers' own BertModel, token for token and feature for feature, by
tests/models/test_bert_encoder.py. Other encoders (T5 on clusters) still load through
transformers (`models/text_encoder.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS, TOKENIZER = "model.safetensors", "tokenizer.json"


def is_plain_bert(path: Path) -> bool:
    """Whether `path` holds a BERT encoder this file implements (else: transformers)."""
    if not ((path / WEIGHTS).is_file() and (path / TOKENIZER).is_file()):
        return False
    meta = json.loads((path / "config.json").read_text())
    return (meta.get("model_type") == "bert" and meta.get("hidden_act") == "gelu"
            and meta.get("position_embedding_type", "absolute") == "absolute"
            and not meta.get("is_decoder", False))


class BertLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.attention_out = nn.Linear(width, width)
        self.attention_norm = nn.LayerNorm(width, eps=eps)
        self.intermediate = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, width)
        self.out_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (B, L, width); keep: (B, 1, 1, L) True where a key is a real token."""
        b, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.heads, width // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)),
                                                  heads(self.value(x)), attn_mask=keep)
        attended = attended.transpose(1, 2).reshape(b, length, width)
        x = self.attention_norm(self.attention_out(attended) + x)  # post-LN, as BERT
        return self.out_norm(self.out(F.gelu(self.intermediate(x))) + x)


class BertEncoder(nn.Module):
    """Token ids and their attention mask to the last layer's features, (B, L, width)."""

    def __init__(self, meta: dict):
        super().__init__()
        width, eps = meta["hidden_size"], meta["layer_norm_eps"]
        self.words = nn.Embedding(meta["vocab_size"], width)
        self.positions = nn.Embedding(meta["max_position_embeddings"], width)
        self.token_types = nn.Embedding(meta["type_vocab_size"], width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.layers = nn.ModuleList(
            BertLayer(width, meta["num_attention_heads"], meta["intermediate_size"], eps)
            for _ in range(meta["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        x = self.words(input_ids) + self.token_types(torch.zeros_like(input_ids)) + \
            self.positions(positions)
        x = self.norm(x)
        keep = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        return x

    @staticmethod
    def hugging_face_names(layers: int) -> dict[str, str]:
        """Our parameter names -> the checkpoint's (BertModel's, without a prefix)."""
        names = {"words.weight": "embeddings.word_embeddings.weight",
                 "positions.weight": "embeddings.position_embeddings.weight",
                 "token_types.weight": "embeddings.token_type_embeddings.weight"}
        for p in ("weight", "bias"):
            names[f"norm.{p}"] = f"embeddings.LayerNorm.{p}"
            for i in range(layers):
                ours, theirs = f"layers.{i}.", f"encoder.layer.{i}."
                for mine, hf in (("query", "attention.self.query"),
                                 ("key", "attention.self.key"),
                                 ("value", "attention.self.value"),
                                 ("attention_out", "attention.output.dense"),
                                 ("attention_norm", "attention.output.LayerNorm"),
                                 ("intermediate", "intermediate.dense"),
                                 ("out", "output.dense"), ("out_norm", "output.LayerNorm")):
                    names[f"{ours}{mine}.{p}"] = f"{theirs}{hf}.{p}"
        return names

    @classmethod
    def load(cls, path: Path) -> "BertEncoder":
        """From a Hugging Face BERT directory (safetensors only: no pickle is ever read)."""
        from safetensors.torch import load_file

        meta = json.loads((path / "config.json").read_text())
        model = cls(meta)  # (built on the meta device instead, it starts 0.24 s slower here)
        stored = {k.removeprefix("bert."): v for k, v in load_file(path / WEIGHTS).items()}
        names = cls.hugging_face_names(meta["num_hidden_layers"])
        missing = sorted(hf for hf in names.values() if hf not in stored)
        if missing:
            raise ValueError(f"{path / WEIGHTS}: not a BERT encoder's weights (no {missing[0]})")
        model.load_state_dict({ours: stored[hf] for ours, hf in names.items()})
        return model


class BertTokenizer:
    """`tokenizer.json` through the tokenizers library: ids and attention mask, each (B,
    max_length), truncated and padded to `max_length`, [CLS] and [SEP] included."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path / TOKENIZER))
        self.tokenizer.enable_truncation(max_length)
        pad = self.tokenizer.padding or {}
        self.tokenizer.enable_padding(length=max_length, pad_id=pad.get("pad_id", 0),
                                      pad_token=pad.get("pad_token", "[PAD]"))

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(texts)
        return {"input_ids": torch.tensor([e.ids for e in encodings]),
                "attention_mask": torch.tensor([e.attention_mask for e in encodings])}
