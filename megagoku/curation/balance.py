"""Category balance: tag each clip with a category, then resample so that the categories reach a
target mix.

Goku balances its training data by tagging clips into categories (from tags the sources ship, or
by classifying the caption) and then down-sampling over-represented and up-sampling
under-represented categories. Here a category's sampling weight is
target_fraction / observed_fraction, clipped to [1 / max_weight, max_weight] so that a rare
category is not repeated into memorisation and a common one is not thrown away wholesale. Each
record gets a whole number of copies: the integer part of its weight, plus one more with
probability equal to the fractional part, drawn from a hash of (seed, record id) so that the
outcome is reproducible and does not depend on the order or the sharding of the records.

The zero-shot classifier embeds captions and category descriptions with a sentence encoder
stored in a local folder (mean pooling over the attention mask and L2 normalisation, the way
sentence-transformers' all-MiniLM models are used) and picks the most similar category.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

OTHER = "other"


def category_from_tags(record: Mapping[str, Any], categories: Sequence[str],
                       default: str = OTHER) -> str:
    """The first of the record's tags that is a configured category, else `default`."""
    tags = record.get("tags") or []
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise ValueError(f"record {record.get('id')!r}: tags must be a list of strings")
    wanted = set(categories)
    return next((t for t in tags if t in wanted), default)


class CaptionZeroShot:
    """Zero-shot caption classifier: the category whose description is most cosine-similar to the
    caption, with a sentence encoder loaded from the local folder `model_dir`.

    `categories` is {name: description} or a list of names (each its own description). An empty
    caption carries nothing to classify and gets `default`.
    """

    def __init__(self, model_dir: str, categories: Union[Mapping[str, str], Sequence[str]],
                 device: str = "cpu", batch_size: int = 64, max_length: int = 128,
                 default: str = OTHER):
        path = os.fspath(model_dir)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"model_dir: {path} is not a model folder (no config.json in it)")
        if isinstance(categories, str):
            raise ValueError("categories: expected a list of names or a dict name -> description")
        if not isinstance(categories, Mapping):
            categories = {name: name for name in categories}
        if not categories:
            raise ValueError("categories: empty")
        for name, text in categories.items():
            if not isinstance(name, str) or not name or not isinstance(text, str) or \
                    not text.strip():
                raise ValueError(f"categories: {name!r} needs a non-empty name and description")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        from transformers import AutoModel, AutoTokenizer

        self.names = list(categories)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.default = default
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.category_embeddings = self.embed([categories[n] for n in self.names])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 unit vectors: token states mean-pooled over the attention mask."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            with torch.no_grad():
                states = self.model(**batch).last_hidden_state
            # Padding positions must not pull the mean, or a caption's vector would depend on
            # the longest caption in its batch.
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return np.concatenate(out)

    def similarities(self, captions: Sequence[str]) -> np.ndarray:
        """(N, C) cosine similarity of each caption to each category, columns in `self.names`."""
        return self.embed(captions) @ self.category_embeddings.T

    def classify(self, captions: Sequence[str]) -> list[str]:
        """The most similar category of each caption, batched."""
        if isinstance(captions, str):
            raise ValueError("captions: expected a list of strings, got one string")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"captions[{i}]: expected a string, got {type(caption).__name__}")
        keep = [i for i, c in enumerate(captions) if c.strip()]
        labels = [self.default] * len(captions)
        if keep:
            best = self.similarities([captions[i] for i in keep]).argmax(1)
            for i, b in zip(keep, best):
                labels[i] = self.names[int(b)]
        return labels


def balance_weights(counts: Mapping[str, int], target: Union[Mapping[str, float], str] = "uniform",
                    max_weight: float = 10.0) -> dict[str, float]:
    """Per-category sampling weight target_fraction / observed_fraction, clipped to
    [1 / max_weight, max_weight].

    Categories with a zero count get no weight. `target` is "uniform" (equal shares of the
    observed categories) or {category: share}; shares are normalised over the observed
    categories, so a target naming a category that is not observed is fine (its share is
    spread over the rest), and an observed category the target leaves out gets the floor
    1 / max_weight.
    """
    if not isinstance(max_weight, (int, float)) or not math.isfinite(max_weight) or \
            max_weight < 1:
        raise ValueError(f"max_weight: must be a finite number >= 1, got {max_weight!r}")
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"counts.{name}: must be a non-negative integer, got {n!r}")
    present = {name: int(n) for name, n in counts.items() if n > 0}
    if isinstance(target, str):
        if target != "uniform":
            raise ValueError(f"target: must be 'uniform' or a dict category -> share, "
                             f"got {target!r}")
        shares = {name: 1.0 for name in present}
    elif isinstance(target, Mapping):
        for name, share in target.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or \
                    not math.isfinite(share) or share < 0:
                raise ValueError(f"target.{name}: must be a non-negative number, got {share!r}")
        if not any(share > 0 for share in target.values()):
            raise ValueError("target: all shares are zero")
        shares = {name: float(target.get(name, 0.0)) for name in present}
        if present and not any(shares.values()):
            raise ValueError(f"target: gives no share to any observed category "
                             f"({', '.join(sorted(present))})")
    else:
        raise ValueError(f"target: must be 'uniform' or a dict category -> share, "
                         f"got {type(target).__name__}")
    if not present:
        return {}
    total, share_total = sum(present.values()), sum(shares.values())
    lo, hi = 1.0 / max_weight, float(max_weight)
    return {name: min(hi, max(lo, (shares[name] / share_total) / (n / total)))
            for name, n in present.items()}


def _uniform(seed: int, record_id: str) -> float:
    """A number in [0, 1) fixed by (seed, record id) alone: sha256, not Python's salted hash()."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def copies_for(record_id: str, weight: float, seed: int = 0) -> int:
    """How many copies of record `record_id` to keep at sampling weight `weight`: the integer
    part, plus one with probability the fractional part (so weight < 1 keeps 0 or 1 copy).
    The expected count is exactly `weight`, and the draw depends only on (seed, record id)."""
    if not isinstance(record_id, str) or not record_id:
        raise ValueError(f"record_id: must be a non-empty string, got {record_id!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
            not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight: must be a finite non-negative number, got {weight!r}")
    whole = math.floor(weight)
    return int(whole) + (1 if _uniform(seed, record_id) < weight - whole else 0)


def resample(records_by_category: Mapping[str, Iterable[Mapping[str, Any]]],
             weights: Mapping[str, float],
             seed: int = 0) -> Iterator[tuple[Mapping[str, Any], int]]:
    """(record, copies) for every record, category by category, streaming; copies may be 0
    (down-sampled: the caller drops the record and can count why)."""
    for category, records in records_by_category.items():
        if category not in weights:
            raise ValueError(f"weights: no weight for category {category!r}")
        weight = weights[category]
        for record in records:
            record_id = record.get("id")
            if not isinstance(record_id, str) or not record_id:
                raise ValueError(f"record in category {category!r}: id must be a non-empty "
                                 f"string, got {record_id!r}")
            yield record, copies_for(record_id, weight, seed)


def expected_counts(counts: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, float]:
    """The count of each category expected after resampling (count * weight): the "after" bars
    of `histogram_png` before the real resampling is run."""
    return {name: n * weights.get(name, 0.0) for name, n in counts.items()}


def histogram_png(before: Mapping[str, int], after: Mapping[str, Union[float, int]],
                  path: Union[str, os.PathLike], title: str = "Category balance") -> str:
    """Bar chart of the category counts before and after balancing, side by side; returns the
    path of the written PNG."""
    names = list(before) + [n for n in after if n not in before]
    if not names:
        raise ValueError("before/after: no categories to draw")
    import matplotlib

    matplotlib.use("Agg")  # curation runs headless; never try to open a window
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.5))
    try:
        ax.bar(x - 0.2, [before.get(n, 0) for n in names], 0.4, label="before")
        ax.bar(x + 0.2, [after.get(n, 0) for n in names], 0.4, label="after")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("clips")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return str(path)
