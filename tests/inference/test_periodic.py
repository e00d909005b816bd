"""Generation during training (the base of the trainer's samples and evaluations): the copy of
the model carries the weights it is given, and the training process's random state is where it
was, however often it runs."""

import torch

from megagoku.config import training_config_from_dict
from megagoku.inference.periodic import PeriodicGeneration
from megagoku.models import TextEncoder, build_model
from tests.conftest import randomize
from tests.inference.test_generate import CONFIG


class Generate(PeriodicGeneration):
    def run(self, step, generator):
        return generator.generate(["a red circle moving left"], 4, 8, 8, steps=2, cfg_scale=2.0,
                                  seed=step)


def test_periodic_generation_uses_the_given_weights_and_leaves_training_rng_alone(tmp_path):
    cfg = training_config_from_dict(CONFIG, "<test>")
    encoder = TextEncoder(cfg.text.encoder, cfg.text.max_length)
    weights = randomize(build_model(cfg.model)).weights()
    periodic = Generate(cfg, tmp_path, encoder, torch.device("cpu"), every=2, off_message="-")
    assert [s for s in range(1, 7) if periodic.due(s)] == [2, 4, 6]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = periodic(2, weights)
    again = periodic(2, weights)  # the copy is built once; the same weights, the same video
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first[0], again[0])
    copy = periodic.generator.model.weights()
    assert all(torch.equal(copy[k], v) for k, v in weights.items())


def test_a_split_model_turns_it_off_with_the_given_warning(tmp_path, caplog):
    cfg = training_config_from_dict({**CONFIG, "parallel": {"tensor_parallel": 2}}, "<test>")
    periodic = Generate(cfg, tmp_path, None, torch.device("cpu"), every=2,
                        off_message="sample.every: needs the whole model")
    assert not periodic.due(2) and "sample.every: needs the whole model" in caplog.text
