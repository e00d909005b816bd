"""Generation during training (the base of the trainer's samples and evaluations): the copy of
the model carries the weights it is given (one tensor at a time, as the trainer gathers them),
and the training process's random state is where it was, however often it runs.
Every layout samples: tests/train/test_samples_layouts.py runs TP=2 and ZeRO-3 on two
ranks."""

import pytest
import torch

from megagoku.config import training_config_from_dict
from megagoku.inference.generate import Generator
from megagoku.inference.periodic import PeriodicGeneration, generation_due
from megagoku.models import TextEncoder, build_model
from megagoku.parallel import ParallelLayout, alone, layout
from megagoku.parallel.weights import WeightsMismatch
from tests.conftest import randomize
from tests.inference.test_generate import CONFIG


def generate(generator, step):
    return generator.generate(["a red circle moving left"], 4, 8, 8, steps=2, cfg_scale=2.0,
                              seed=step)


class Generate(PeriodicGeneration):
    def run(self, step, generator):
        return generate(generator, step)


def give(periodic, weights):
    """What the trainer does: each whole tensor in turn, the caller dropping its own."""
    for name, tensor in weights.items():
        periodic.take(name, tensor.clone())


def test_periodic_generation_uses_the_given_weights_and_leaves_training_rng_alone(tmp_path):
    cfg = training_config_from_dict(CONFIG, "<test>")
    encoder = TextEncoder(cfg.text.encoder, cfg.text.max_length)
    weights = randomize(build_model(cfg.model)).weights()
    periodic = Generate(cfg, tmp_path, encoder, torch.device("cpu"), every=2)
    assert [s for s in range(1, 7) if periodic.due(s)] == [2, 4, 6]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    give(periodic, weights)
    first = periodic(2)
    give(periodic, weights)
    again = periodic(2)  # the copy is built once; the same weights, the same video
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first[0], again[0])
    copy = periodic.generator.model.weights()
    assert all(torch.equal(copy[k], v) for k, v in weights.items())


def test_tensors_taken_one_at_a_time_are_the_weights_generated_with(tmp_path):
    cfg = training_config_from_dict(CONFIG, "<test>")
    encoder = TextEncoder(cfg.text.encoder, cfg.text.max_length)
    model = randomize(build_model(cfg.model))
    weights = model.weights()
    streamed = Generate(cfg, tmp_path, encoder, torch.device("cpu"), every=2)
    give(streamed, weights)
    # the copy generates what the model it was given generates
    assert torch.equal(streamed(2)[0], generate(Generator(cfg, model.eval(), encoder), 2)[0])
    copy = streamed.generator.model.weights()
    assert all(torch.equal(copy[k], v) for k, v in weights.items())
    name = next(iter(weights))
    streamed.take(name, weights[name])  # the rest not given: refused, not a stale copy
    with pytest.raises(WeightsMismatch, match="tensors of the sampling copy of the model were "
                                              "not given"):
        streamed(4)
    with pytest.raises(WeightsMismatch, match=f"{name} is"):
        streamed.take(name, weights[name][:1])


def test_due_on_every_rank_when_samples_or_an_evaluation_fall_on_the_step():
    cfg = training_config_from_dict({**CONFIG, "sample": {"every": 4}}, "<test>")
    assert [s for s in range(1, 9) if generation_due(cfg, s)] == [4, 8]
    cfg = training_config_from_dict({**CONFIG, "sample": {"every": 4}, "eval": {"every": 3}},
                                    "<test>")
    assert [s for s in range(1, 9) if generation_due(cfg, s)] == [3, 4, 6, 8]
    assert not any(generation_due(training_config_from_dict(CONFIG, "<test>"), s)
                   for s in range(1, 9))


def test_alone_shows_a_one_process_grid_and_puts_the_grid_back(monkeypatch):
    from megagoku.parallel import state

    split = ParallelLayout(tensor_parallel=2, ulysses=2, sequence_parallel=True)
    monkeypatch.setattr(state, "_layout", split)
    group = state.parallel_state._TENSOR_MODEL_PARALLEL_GROUP
    with pytest.raises(RuntimeError, match="inside"):
        with alone():
            assert layout() == ParallelLayout()
            assert state.parallel_state.get_tensor_model_parallel_world_size() == 1
            assert state.parallel_state.get_tensor_model_parallel_group() is not group
            raise RuntimeError("inside")
    assert layout() == split
    assert state.parallel_state._TENSOR_MODEL_PARALLEL_GROUP is group
