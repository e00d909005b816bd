"""A quickly trained evaluation classifier (~15 s), shared by the tests of this folder,
and a cache directory in which a classifier stands in for the full one of any data geometry the
tests use. The full recipe (ClassifierSpec's defaults, ~50 s) is tested in test_classifier.py
(slow)."""

import pytest
import torch

from megagoku.evaluation.classifier import (ClassifierSpec, ShapesClassifier, save_classifier,
                                            train_classifier)

QUICK = dict(steps=200, train_videos=1024, train_images=512)


@pytest.fixture(scope="session")
def quick_classifier():
    model, report = train_classifier(ClassifierSpec(**QUICK), say=lambda s: None)
    return model, report


@pytest.fixture
def classifier_cache(tmp_path, monkeypatch):
    """A cache dir ($MEGAGOKU_EVAL_CACHE) where `install(data, model)` puts a classifier (the
    quick one, or by default an untrained one: enough where only the plumbing is tested) under
    the full recipe's key for that data, so `load_or_train(data)` loads it instead of training."""
    monkeypatch.setenv("MEGAGOKU_EVAL_CACHE", str(tmp_path / "eval_cache"))

    def install(data, model=None, report=None):
        spec = ClassifierSpec.for_data(data)
        if model is None:
            torch.manual_seed(0)
            model = ShapesClassifier(spec)
        save_classifier(model, report or {}, spec)

    return install
