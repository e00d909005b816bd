import pytest
import torch

from megagoku.flow import euler_sample, guided_velocity, sampling_schedule


@pytest.mark.parametrize("steps", [1, 3, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_lands_exactly_on_a_point_mass(steps, shift):
    """For data concentrated at c, the rectified-flow velocity is v(x, t) = (c - x) / (1 - t):
    every straight line ends at c, and Euler integration is exact at any step count."""
    c = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    noise = torch.randn(4, 3, dtype=torch.float64)
    out = euler_sample(lambda x, t: (c - x) / (1.0 - t), noise, sampling_schedule(steps, shift))
    torch.testing.assert_close(out, c.expand(4, 3))


def test_euler_is_exact_for_constant_velocity_with_guidance():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5])
    noise = torch.zeros(2)
    out = euler_sample(lambda x, t: guided_velocity(a, b, 3.0), noise, sampling_schedule(7))
    torch.testing.assert_close(out, b + 3.0 * (a - b))


def test_schedule_runs_from_noise_to_data_and_shift_spends_steps_at_high_noise():
    plain, shifted = sampling_schedule(10), sampling_schedule(10, 3.0)
    for s in (plain, shifted):
        assert s[0] == 0 and s[-1] == 1 and bool((s[1:] > s[:-1]).all())
    assert bool((shifted[1:-1] < plain[1:-1]).all())


def test_guidance_scale_one_is_the_conditional_model():
    vc, vu = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(guided_velocity(vc, vu, 1.0), vc)
    torch.testing.assert_close(guided_velocity(vc, vu, 0.0), vu)
