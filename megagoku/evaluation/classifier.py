"""A small 3D-convolutional network that reads colour, shape and direction of motion from the
built-in shapes data, trained here, in a minute or two on one CPU core. It is the evaluator's
eye: its predictions score prompt adherence (`adherence.py`), and its pooled penultimate features
are the space of the Fréchet distances (`frechet.py`): `fd_shapes3d` for clips, the same network
on single frames for images. That is *not* FVD or FID (those use I3D / Inception features of
natural video): it is only comparable between runs scored with the same classifier.

Why train one: `describe_video` (data/shapes.py) reads colour and direction from pixels with
hand-written rules but cannot tell a circle from a square at 16 px, and a Fréchet distance needs a
learnt feature space that separates what the data varies in.

The network sees clips (3, T, H, W) in [-1, 1]; an image is a one-frame clip (the temporal
kernels' outer taps see zero padding). It trains on every (colour, shape, direction) combination,
held-out ones included: it judges generations and must know every answer. Trained weights are
cached as safetensors under `default_cache_dir()` (`$MEGAGOKU_EVAL_CACHE`, else
~/.cache/megagoku/eval), keyed by everything that shapes them: the data's size, frames and
displacement, the network and its training recipe, and `CLASSIFIER_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from megagoku.config.schema import DataConfig
from megagoku.data.shapes import COLOURS, DIRECTIONS, SHAPES, ShapesDataset, parse_caption
from megagoku.launch import heartbeat
from megagoku.progress import RateMeter
from megagoku.storage import write_tensors

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 1
ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "direction": list(DIRECTIONS)}
IGNORE = -100  # the label of an attribute a sample does not have (an image has no direction)


@dataclass
class ClassifierSpec:
    """What the classifier is trained on and how; its hash names the cached weights."""

    height: int = 16
    width: int = 16
    frames: int = 8
    displacement: tuple[float, float] = (0.6, 0.8)
    channels: tuple[int, int, int] = (16, 32, 64)
    features: int = 64
    steps: int = 1000
    batch: int = 32  # videos per step, and as many images
    lr: float = 3e-3
    train_videos: int = 4096
    train_images: int = 2048
    noise_augment: float = 0.15  # max std of the Gaussian noise added to half the batches
    seed: int = 1234

    def key(self) -> str:
        payload = json.dumps({"version": CLASSIFIER_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def for_data(cls, data: DataConfig, **overrides) -> "ClassifierSpec":
        if data.kind != "shapes":
            raise ValueError(f"data.kind: {data.kind}: the evaluation classifier knows only the "
                             "built-in shapes data")
        return cls(height=data.height, width=data.width, frames=data.frames,
                   displacement=tuple(data.displacement), **overrides)


class ShapesClassifier(nn.Module):
    """Three 3D conv stages (the 2nd and 3rd halve H and W), global average pooling to
    `features` numbers, one linear head per attribute."""

    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        c1, c2, c3 = spec.channels
        self.body = nn.Sequential(
            nn.Conv3d(3, c1, 3, padding=1), nn.GELU(),
            nn.Conv3d(c1, c2, 3, stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(c2, c3, 3, stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(c3, spec.features, 3, padding=1), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(spec.features, len(values))
                                    for name, values in ATTRIBUTES.items()})

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, features): the Fréchet-distance space."""
        return self.body(clips).mean(dim=(2, 3, 4))

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(clips)
        return {name: head(feats) for name, head in self.heads.items()}


def labels_of(caption: str) -> list[int]:
    """[colour, shape, direction] indices of a caption; IGNORE where it names none."""
    parsed = parse_caption(caption)
    return [ATTRIBUTES[name].index(parsed[name]) if parsed[name] else IGNORE
            for name in ATTRIBUTES]


def render_pool(spec: ClassifierSpec, kind: str, count: int, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` real clips of `kind` (every combination, none held out) -> ((N, 3, T, H, W),
    labels (N, 3))."""
    data = DataConfig(height=spec.height, width=spec.width, frames=spec.frames,
                      displacement=spec.displacement, holdout=[], seed=seed,
                      image_fraction=1.0 if kind == "image" else 0.0)
    dataset = ShapesDataset(data)
    samples = []
    for i in range(count):
        samples.append(dataset[i])
        heartbeat.progress("render")
    return (torch.stack([s.pixels for s in samples]),
            torch.tensor([labels_of(s.caption) for s in samples]))


def _loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for i, name in enumerate(ATTRIBUTES):
        if (labels[:, i] != IGNORE).any():
            total = total + F.cross_entropy(logits[name], labels[:, i], ignore_index=IGNORE)
    return total


@torch.no_grad()
def predict(model: ShapesClassifier, clips: torch.Tensor, batch: int = 128
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(predicted index per attribute (N,), features (N, F)) of clips (N, 3, T, H, W)."""
    model.eval()
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    feats = []
    for start in range(0, len(clips), batch):
        x = clips[start:start + batch].float().clamp(-1, 1)
        f = model.features(x)
        feats.append(f.double())
        for name, head in model.heads.items():
            preds[name].append(head(f).argmax(-1))
        heartbeat.progress("classify")
    return {k: torch.cat(v) for k, v in preds.items()}, torch.cat(feats)


def accuracy(model: ShapesClassifier, clips: torch.Tensor, labels: torch.Tensor
             ) -> dict[str, float]:
    preds, _ = predict(model, clips)
    out = {}
    for i, name in enumerate(ATTRIBUTES):
        known = labels[:, i] != IGNORE
        if known.any():
            out[name] = float((preds[name][known] == labels[known, i]).float().mean())
    return out


def train_classifier(spec: ClassifierSpec, say: Callable[[str], None] = print
                     ) -> tuple[ShapesClassifier, dict]:
    """Train on freshly rendered clips and images; returns the model and a report with its
    accuracy on renders it never saw. Uses its own random streams only (the global ones are
    saved and restored), so calling it inside a training run changes nothing there."""
    # enable_grad: the caller may be inside no_grad (the evaluator during training is).
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(spec.seed)
        model = ShapesClassifier(spec)
        g = torch.Generator().manual_seed(spec.seed)
        start = time.perf_counter()
        videos, video_labels = render_pool(spec, "video", spec.train_videos, spec.seed)
        images, image_labels = render_pool(spec, "image", spec.train_images, spec.seed + 1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, spec.lr, total_steps=spec.steps,
                                                       pct_start=0.1)
        model.train()
        every = max(1, spec.steps // 10)
        meter = RateMeter(spec.steps)
        for step in range(1, spec.steps + 1):
            loss = 0.0
            for clips, labels in ((videos, video_labels), (images, image_labels)):
                pick = torch.randint(0, len(clips), (spec.batch,), generator=g)
                x = clips[pick]
                if step % 2 and spec.noise_augment > 0:  # generations are rarely clean
                    std = torch.rand(len(x), 1, 1, 1, 1, generator=g) * spec.noise_augment
                    x = x + std * torch.randn(x.shape, generator=g)
                loss = loss + _loss(model(x), labels[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            heartbeat.progress("classifier")
            if step % every == 0 or step == spec.steps:
                rate, _ = meter.measure(step)
                say(f"evaluation classifier: step {step}/{spec.steps} loss {loss.item():.4f} "
                    f"{rate:.1f} step/s ETA {meter.eta(step)}")
        test_videos, test_video_labels = render_pool(spec, "video", 512, spec.seed + 2)
        test_images, test_image_labels = render_pool(spec, "image", 512, spec.seed + 3)
        report = {"spec": asdict(spec), "version": CLASSIFIER_VERSION,
                  "train_seconds": round(time.perf_counter() - start, 1),
                  "test_accuracy_video": accuracy(model, test_videos, test_video_labels),
                  "test_accuracy_image": accuracy(model, test_images, test_image_labels)}
    model.eval()
    return model, report


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEGAGOKU_EVAL_CACHE",
                               Path.home() / ".cache" / "megagoku" / "eval"))


def cache_paths(spec: ClassifierSpec, cache_dir: Optional[Path] = None) -> tuple[Path, Path]:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = f"shapes_classifier_{spec.key()}"
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def save_classifier(model: ShapesClassifier, report: dict, spec: ClassifierSpec,
                    cache_dir: Optional[Path] = None) -> Path:
    """Write weights and report; atomically (another process may read the cache)."""
    weights, meta = cache_paths(spec, cache_dir)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(f".tmp{os.getpid()}")
    write_tensors(tmp, {k: v.contiguous() for k, v in model.state_dict().items()})
    meta.write_text(json.dumps(report, indent=1))
    os.replace(tmp, weights)
    return weights


def load_classifier(spec: ClassifierSpec, cache_dir: Optional[Path] = None
                    ) -> Optional[ShapesClassifier]:
    """The cached classifier of `spec`, or None when there is none (safetensors only)."""
    weights, _ = cache_paths(spec, cache_dir)
    if not weights.is_file():
        return None
    with torch.random.fork_rng(devices=[]):  # building the layers draws random init weights
        model = ShapesClassifier(spec)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def load_or_train(data: DataConfig, cache_dir: Optional[Path] = None,
                  say: Callable[[str], None] = print) -> ShapesClassifier:
    """The classifier for this data's geometry, trained (and cached) on first use."""
    spec = ClassifierSpec.for_data(data)
    model = load_classifier(spec, cache_dir)
    if model is not None:
        return model
    weights, _ = cache_paths(spec, cache_dir)
    say(f"training the evaluation classifier for {spec.frames}x{spec.height}x{spec.width} "
        f"shapes (once; cached at {weights})")
    model, report = train_classifier(spec, say)
    save_classifier(model, report, spec, cache_dir)
    say(f"evaluation classifier: held-out renders: videos {report['test_accuracy_video']}, "
        f"images {report['test_accuracy_image']}")
    return model
