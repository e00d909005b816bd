"""What one step trains on: this data-parallel replica's next pack, its caption features (with
classifier-free-guidance dropout) and, for an image-conditioned model, each video's first frame;
with the loader's part of the checkpoint (every replica's position and window)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import torch

from megagoku.config import TrainingConfig
from megagoku.data import PackingLoader
from megagoku.data.cache import CachedDataset
from megagoku.data.packing import PackedBatch, first_frame_tokens, reshard_loader_states
from megagoku.data.prefetch import PackFeed
from megagoku.data.workers import ReadOptions
from megagoku.models import TextEncoder
from megagoku.parallel import collectives, data_parallel_size
from megagoku.train.preflight import Inputs

log = logging.getLogger(__name__)


def decode_counts(loader: PackFeed) -> dict[str, int]:
    """This rank's files decoded per backend and skipped per reason (`data/decoded_dali`,
    `data/skipped_too_short`, ...), counted by its data workers, for the metrics; nothing for
    data that is not decoded."""
    stats = loader.decode_stats
    return stats.as_metrics() if stats.decoded or stats.skipped else {}


@dataclass
class StepInputs:
    batch: PackedBatch  # on the training device
    text: torch.Tensor  # packed caption features
    text_cu: torch.Tensor
    first_frame: Optional[torch.Tensor]  # the I2V condition, for image-conditioned models
    seconds: float  # spent reading and encoding (the data wait)


class TrainData:
    """The TP and Ulysses ranks of a replica read the same packs and draw the same dropouts
    (from the replica's generator); replicas read different samples."""

    def __init__(self, config: TrainingConfig, inputs: Inputs, device: torch.device,
                 replica: int, replicas: int):
        self.config, self.device = config, device
        self.dataset = inputs.dataset
        self.replica, self.replicas = replica, replicas
        self._text_encoder: Optional[TextEncoder] = None
        # A latent cache holds every caption's features and the empty one: a run from it loads
        # no text encoder (a T5-XXL on every rank) unless rank 0 samples or evaluates.
        empty = inputs.dataset.empty_caption() if isinstance(inputs.dataset, CachedDataset) \
            else None
        self.empty_caption = empty.to(device) if empty is not None else None
        # Samples decoded in data workers; on a GPU the next pack is built and copied meanwhile.
        self.loader = PackFeed(
            PackingLoader(inputs.dataset, inputs.encode, config.model.patch_size,
                          config.data.tokens_per_step, replica=(replica, replicas),
                          window=config.data.pack_window,
                          reading=ReadOptions.from_config(config.data, device.type)),
            device)

    def next(self, generator: torch.Generator) -> StepInputs:
        """The next pack and its conditioning; the draws (caption dropout, then first-frame
        dropout) come from `generator` in that order."""
        cfg = self.config
        start = time.perf_counter()
        batch = self.loader.next_pack().to(self.device)
        drop = torch.rand(batch.num_samples, generator=generator) < cfg.text.dropout
        text, text_cu = self.caption_features(batch, drop.tolist())
        first_frame = None
        if cfg.model.image_condition:  # I2V: each video's first frame, sometimes dropped
            keep = torch.rand(batch.num_samples, generator=generator) >= cfg.train.image_dropout
            first_frame = first_frame_tokens(batch, cfg.model.patch_size,
                                             cfg.model.in_channels, keep.tolist())
        return StepInputs(batch, text, text_cu, first_frame, time.perf_counter() - start)

    @property
    def text_encoder(self) -> TextEncoder:
        """Loaded at its first use."""
        if self._text_encoder is None:
            self._text_encoder = TextEncoder(self.config.text.encoder,
                                             self.config.text.max_length, self.device)
        return self._text_encoder

    def caption_features(self, batch: PackedBatch, dropped: list[bool]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed caption features and their cu_seqlens; a dropped caption (for CFG) is the
        empty one. Cached features are used when the batch has them."""
        if batch.texts is None:
            captions = ["" if d else c for d, c in zip(dropped, batch.captions)]
            return self.text_encoder.encode(captions)
        empty = None
        if any(dropped):
            empty = self.empty_caption if self.empty_caption is not None else \
                self.text_encoder.encode([""])[0]
        feats = [empty if d else t.to(self.device) for d, t in zip(dropped, batch.texts)]
        lengths = torch.tensor([0] + [f.shape[0] for f in feats])
        return torch.cat(feats), lengths.cumsum(0).to(torch.int32).to(self.device)

    def skipped(self) -> float:
        """Unreadable samples skipped so far, over all data-parallel replicas (collective; on
        the training device, which NCCL needs)."""
        count = collectives.sum_over(torch.tensor([float(self.loader.skipped)],
                                                  device=self.device))
        if collectives.world_size() > 1:  # TP/SP ranks share the stream
            count /= collectives.world_size() // data_parallel_size()
        return float(count.item())

    def decode_counts(self) -> dict[str, int]:
        return decode_counts(self.loader)

    def close(self) -> None:
        """Stop the data workers (and the pack thread on a GPU)."""
        self.loader.close()

    def state_dict(self) -> dict:
        """Every replica's loader state (collective: the TP and Ulysses ranks of a replica hold
        the same state; one per replica is kept)."""
        by_replica = dict(collectives.gather_objects((self.replica, self.loader.state_dict())))
        return {"loader": {"replicas": self.replicas,
                           "states": [by_replica[r] for r in range(self.replicas)]}}

    def load_state_dict(self, state: dict) -> None:
        """This replica's position; after a change of DP size the saved replicas' states are
        resharded (`reshard_loader_states` says what is kept)."""
        saved = state["loader"]
        states = saved["states"] if saved["replicas"] == self.replicas else \
            reshard_loader_states(saved["states"], self.replicas)
        self.loader.load_state_dict(states[self.replica])
