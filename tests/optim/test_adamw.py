"""The project's AdamW (`optim.adamw`): torch's fused kernel where the parameters allow it, the
same update as the foreach implementation to rounding, and a checkpoint of either resumes under
the other."""

import copy

import torch
from torch import nn

from megagoku.optim import adamw
from megagoku.parallel.optimizer_state import create_adam_state
from megagoku.train.train_state import optimizer_meta, restore_optimizer_meta


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Linear(32, 3))


def train(net, optimizer, steps, start=0):
    g = torch.Generator().manual_seed(start)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        optimizer.zero_grad(set_to_none=True)
        (net(x) - y).pow(2).mean().backward()
        optimizer.step()


def test_cpu_parameters_get_the_fused_kernel_and_meta_ones_do_not():
    assert adamw(model().parameters(), lr=1e-3).defaults["fused"]
    assert not adamw(model().parameters(), lr=1e-3, fused=False).defaults["fused"]
    with torch.device("meta"):
        on_meta = nn.Linear(4, 4)
    assert not adamw(on_meta.parameters(), lr=1e-3).defaults["fused"]


def test_fused_is_the_foreach_update_to_rounding():
    fused_net, foreach_net = model(), model()
    fused = adamw(fused_net.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    foreach = torch.optim.AdamW(foreach_net.parameters(), lr=1e-2, betas=(0.9, 0.99),
                                weight_decay=0.1, foreach=True)
    train(fused_net, fused, 20)
    train(foreach_net, foreach, 20)
    moved = 0.0
    for p, q, first in zip(fused_net.parameters(), foreach_net.parameters(), model().parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        moved = max(moved, float((p - first).detach().abs().max()))
    assert moved > 0.05  # 20 steps at lr 1e-2 moved the weights: the comparison means something


def test_a_foreach_checkpoint_resumes_fused_with_the_same_state():
    """What the trainer's resume does: make the state (`create_adam_state`), write the saved
    moments in, restore the groups' hyper-parameters; the saved run's implementation (foreach)
    must not replace this run's (fused), whose step count lives on the parameters' device."""
    saved_net = model()
    saved = torch.optim.AdamW(saved_net.parameters(), lr=1e-2, weight_decay=0.1, foreach=True)
    train(saved_net, saved, 5)
    meta = optimizer_meta(saved)
    assert meta["groups"][0]["foreach"] is True

    resumed_net = copy.deepcopy(saved_net)
    resumed = adamw(resumed_net.parameters(), lr=1e-3)
    create_adam_state(resumed_net, resumed, None, meta["step"])
    for p, q in zip(resumed_net.parameters(), saved_net.parameters()):
        for moment in ("exp_avg", "exp_avg_sq"):
            resumed.state[p][moment].copy_(saved.state[q][moment])
    restore_optimizer_meta(resumed, None, meta, None)
    group = resumed.param_groups[0]
    assert group["fused"] and not group["foreach"]
    assert group["lr"] == 1e-2 and group["weight_decay"] == 0.1

    train(saved_net, saved, 5, start=1)
    train(resumed_net, resumed, 5, start=1)
    for p, q in zip(resumed_net.parameters(), saved_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
