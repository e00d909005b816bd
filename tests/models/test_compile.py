"""`model.compile`: the blocks compiled one by one (regional torch.compile) compute the eager
model, forward and gradients, with the same state dict names. Slow: inductor builds C++ on the
CPU (about a minute here)."""

import pytest
import torch

from megagoku.models import build_model
from tests.conftest import randomize, small_model_config
from tests.models.test_goku import make_inputs, run_packed


@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["auto"])
def test_compiled_blocks_equal_eager(kernels):
    torch.manual_seed(0)
    eager = randomize(build_model(small_model_config(kernels=kernels)))
    compiled = build_model(small_model_config(kernels=kernels, compile=True))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    batch, texts, timesteps = make_inputs()
    want = run_packed(eager, batch, texts, timesteps)
    want.pow(2).mean().backward()
    for _ in range(2):  # the second call runs the cached graph
        compiled.zero_grad()
        got = run_packed(compiled, batch, texts, timesteps)
        got.pow(2).mean().backward()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
