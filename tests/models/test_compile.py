"""`model.compile`: the blocks compiled one by one (regional torch.compile) compute the eager
model, forward and gradients, with the same state dict names. Slow: inductor builds C++ on the
CPU (about a minute here)."""

import pytest
import torch

from megagoku.models import build_model
from tests.conftest import randomize, small_model_config
from tests.fresh_process import check_in_fresh_process
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


def test_the_attention_kernels_are_left_out_of_compile_which_only_compiled_runs_import():
    """In a fresh process: building an eager model does not import dynamo (0.4 s per process);
    a compiled one marks `varlen_attention` for dynamo to leave alone (torch's own disable),
    which the attention modules then call."""
    check = (
        "import sys, torch\n"
        "from megagoku.models import attention, build_model\n"
        "from tests.conftest import small_model_config\n"
        "build_model(small_model_config())\n"
        "assert 'torch._dynamo' not in sys.modules, 'an eager model imported dynamo'\n"
        "plain = attention.varlen_attention\n"
        "build_model(small_model_config(compile=True))\n"
        "excluded = attention.varlen_attention\n"
        "assert excluded is not plain and excluded._torchdynamo_disable, 'not excluded'\n"
        "build_model(small_model_config(compile=True))\n"
        "assert attention.varlen_attention is excluded, 'excluded twice'\n")
    check_in_fresh_process(check)
