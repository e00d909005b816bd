import pytest
import torch

from megagoku.config import FlowConfig
from megagoku.flow import flow_loss, interpolate, sample_timesteps, shift_time, training_loss


def test_interpolation_endpoints_follow_gokus_convention():
    x1, x0 = torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(interpolate(x1, x0, torch.zeros(6)), x0)  # t=0: noise
    torch.testing.assert_close(interpolate(x1, x0, torch.ones(6)), x1)  # t=1: data
    t = torch.full((6,), 0.25)
    torch.testing.assert_close(interpolate(x1, x0, t), 0.25 * x1 + 0.75 * x0)


def test_time_shift_keeps_endpoints_and_moves_towards_noise():
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert bool((shifted[1:-1] < t[1:-1]).all())
    torch.testing.assert_close(shift_time(torch.tensor(0.5), 3.0), torch.tensor(0.25))


def test_logit_normal_sampling_median_and_resolution_dependent_shift():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(FlowConfig(), torch.full((20000,), 64), g)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(t.median()) - 0.5) < 0.02
    cfg = FlowConfig(time_shift=1.0, time_shift_ref_tokens=64)
    small = sample_timesteps(cfg, torch.full((20000,), 64), g)
    large = sample_timesteps(cfg, torch.full((20000,), 64 * 9), g)  # shift 3
    assert abs(float(small.median()) - 0.5) < 0.02
    assert abs(float(large.median()) - 0.25) < 0.02


def test_loss_weighting_by_token_or_by_sample():
    segment = torch.tensor([0, 0, 0, 1])  # sample 0 has 3 tokens, sample 1 has 1
    pred = torch.zeros(4, 2)
    target = torch.tensor([[1.0, 1.0]] * 3 + [[3.0, 3.0]])
    per_token = torch.tensor([1.0, 1.0, 1.0, 9.0])
    loss, per_sample = flow_loss(pred, target, segment, 2, "token")
    torch.testing.assert_close(loss, per_token.mean())
    torch.testing.assert_close(per_sample, torch.tensor([1.0, 9.0]))
    loss, _ = flow_loss(pred, target, segment, 2, "sample")
    torch.testing.assert_close(loss, torch.tensor(5.0))
    with pytest.raises(ValueError, match="loss_weighting"):
        flow_loss(pred, target, segment, 2, "pixel")


def test_training_loss_is_zero_for_the_true_velocity():
    """An oracle that knows x1 recovers v = x1 - x0 = (x1 - x_t) / (1 - t) from x_t."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(10, 3, dtype=torch.float64)
    segment = torch.tensor([0] * 6 + [1] * 4)

    def oracle(x_t, t):
        return (x1 - x_t) / (1 - t[segment])[:, None]

    loss, per_sample, t = training_loss(oracle, x1, segment, torch.tensor([6, 4]), FlowConfig(), g)
    assert float(loss) < 1e-20 and t.shape == (2,)
    # The wrong sign of the target is a large loss.
    loss, _, _ = training_loss(lambda x_t, t: -oracle(x_t, t), x1, segment,
                               torch.tensor([6, 4]), FlowConfig(), g)
    assert float(loss) > 0.5
