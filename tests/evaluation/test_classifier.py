"""The evaluation classifier learns the built-in data (held-out renders far above chance), is
cached as safetensors under a key of what shaped it, and loads back to the same predictions."""

import pytest
import torch

from megagoku.config import DataConfig
from megagoku.evaluation.classifier import (ClassifierSpec, ShapesClassifier, accuracy,
                                            cache_paths, load_classifier, load_or_train, predict,
                                            render_pool, save_classifier, train_classifier)
from tests.evaluation.conftest import QUICK


def test_quick_classifier_reads_unseen_renders_far_above_chance(quick_classifier):
    model, report = quick_classifier
    spec = ClassifierSpec(**QUICK)
    videos, labels = render_pool(spec, "video", 128, seed=99)  # a seed it never trained on
    acc = accuracy(model, videos, labels)
    # Chance: colour 25%, shape 33%, direction 25%.
    assert acc["colour"] > 0.95 and acc["direction"] > 0.9 and acc["shape"] > 0.6, acc
    assert report["test_accuracy_image"]["colour"] > 0.95


def test_cache_round_trip_and_key(tmp_path, quick_classifier):
    model, report = quick_classifier
    spec = ClassifierSpec(**QUICK)
    assert load_classifier(spec, tmp_path) is None
    path = save_classifier(model, report, spec, tmp_path)
    assert path.suffix == ".safetensors" and path == cache_paths(spec, tmp_path)[0]
    loaded = load_classifier(spec, tmp_path)
    clips, _ = render_pool(spec, "image", 16, seed=5)
    (p1, f1), (p2, f2) = predict(model, clips), predict(loaded, clips)
    assert torch.equal(f1, f2) and all(torch.equal(p1[k], p2[k]) for k in p1)
    # What shapes the classifier names its file: another geometry, another recipe, another key.
    keys = {spec.key(), ClassifierSpec(**QUICK, height=32).key(),
            ClassifierSpec(**{**QUICK, "steps": 201}).key(),
            ClassifierSpec.for_data(DataConfig(displacement=(0.5, 0.7))).key()}
    assert len(keys) == 4
    with pytest.raises(ValueError, match="data.kind: manifest"):
        ClassifierSpec.for_data(DataConfig(kind="manifest", manifest="m.jsonl"))


def test_training_leaves_the_global_random_state_alone_and_runs_under_no_grad():
    """The evaluator during training calls it from inside torch.no_grad()."""
    spec = ClassifierSpec(steps=2, train_videos=8, train_images=8)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with torch.no_grad():
        model, _ = train_classifier(spec, say=lambda s: None)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(spec.seed)  # the initial weights train_classifier starts from
    initial = ShapesClassifier(spec)
    assert not torch.equal(model.body[0].weight, initial.body[0].weight)  # it did train


@pytest.mark.slow
def test_full_recipe_learns_every_attribute(tmp_path):
    """The classifier `megagoku eval` trains (50 s on two cores, 87 s on one)."""
    data = DataConfig()
    model = load_or_train(data, tmp_path, say=lambda s: None)
    spec = ClassifierSpec.for_data(data)
    videos, video_labels = render_pool(spec, "video", 256, seed=77)
    images, image_labels = render_pool(spec, "image", 256, seed=78)
    v, i = accuracy(model, videos, video_labels), accuracy(model, images, image_labels)
    assert v["colour"] > 0.99 and v["direction"] > 0.98 and v["shape"] > 0.95, v
    assert i["colour"] > 0.99 and i["shape"] > 0.9, i
    assert load_or_train(data, tmp_path, say=pytest.fail) is not None  # cached: no training
