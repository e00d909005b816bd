"""The one check of whole weights against a model (`WeightsFit`: the sample tool's `check_fits`
and training's `restore_weights` both use it): every kind of misfit collected into one line,
tensors named, fresh names allowed to be absent. The files' side of it (the path in the line) is
tests/train/test_checkpoint_content.py and tests/train/test_strict_weights.py."""

import pytest
import torch

from megagoku.config import training_config_from_dict
from megagoku.models import build_model
from megagoku.parallel import ensure_single_process_groups
from megagoku.parallel.weights import WeightsFit, WeightsMismatch, check_fits, load_full_weights
from tests.inference.test_generate import CONFIG


@pytest.fixture
def model():
    ensure_single_process_groups()
    return build_model(training_config_from_dict(CONFIG, "<test>").model)


def test_weights_that_fit_load(model):
    weights = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v.clone()
               for k, v in model.weights().items()}
    fit = WeightsFit(model, weights)
    assert all(fit.check(k, v) for k, v in weights.items()) and fit.problems() == ""
    load_full_weights(model, weights)
    assert all(torch.equal(model.weights()[k], v) for k, v in weights.items())


def test_every_misfit_is_named_in_one_line(model):
    weights = dict(model.weights())
    absent, narrow, whole_numbers = list(weights)[:3]
    del weights[absent]
    weights[narrow] = weights[narrow][..., :1]
    weights[whole_numbers] = torch.zeros(weights[whole_numbers].shape, dtype=torch.int64)
    weights["blocks.9.extra.weight"] = torch.zeros(2)
    with pytest.raises(WeightsMismatch) as error:
        check_fits(model, weights)
    line = str(error.value)
    assert "\n" not in line and line.startswith("does not fit this model: ")
    assert "1 tensors of the checkpoint have no place in this model (blocks.9.*)" in line
    assert f"1 tensors of the model are not in the checkpoint ({absent})" in line
    assert f"1 shapes differ (checkpoint vs model: {narrow} " in line
    assert f"1 dtypes differ (checkpoint vs model: {whole_numbers} torch.int64 vs " in line
    fit = WeightsFit(model, weights, fresh=[absent])  # a name the weights may lack
    for name in fit.wanted.keys() & weights.keys():
        fit.check(name, weights[name])
    assert fit.missing == [] and fit.skipped == {narrow, whole_numbers}
