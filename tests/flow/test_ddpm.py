"""DDPM: schedules, q_sample and the posterior against hand computation, respacing, the
eps-loss at the true noise, and both samplers driven by the exact eps of a point mass."""

import math

import pytest
import torch

from megagoku.flow.ddpm import (DDPMSchedule, ddim_sample, ddpm_sample, ddpm_training_loss,
                                guided_eps, make_schedule, model_time, predict_x0, q_posterior,
                                q_sample)

SMALL = DDPMSchedule(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))


def test_schedules():
    linear = make_schedule("linear")
    assert linear.num_steps == 1000
    assert float(linear.betas[0]) == pytest.approx(1e-4)
    assert float(linear.betas[-1]) == pytest.approx(0.02)
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    assert float(linear.alphas_cumprod[-1]) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(4.04e-5, rel=0.01)  # the known end of DDPM's schedule
    cosine = make_schedule("cosine")
    # abar follows cos^2(((t/T + s)/(1 + s)) pi/2) / cos^2((s/(1 + s)) pi/2) until the cap.
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(cosine.alphas_cumprod[499]) == pytest.approx(f(500) / f(0), rel=1e-9)
    assert float(cosine.betas.max()) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="linear or cosine"):
        make_schedule("quadratic")


def test_q_sample_and_posterior_by_hand():
    """abar = 0.9, 0.72, 0.504. The posterior is checked against the product of the two
    Gaussians it comes from (Bayes), not against DDPM's closed-form coefficients."""
    torch.testing.assert_close(SMALL.alphas_cumprod,
                               torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))
    x0, noise = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]])
    x_t = q_sample(x0, torch.tensor([1]), noise, SMALL)
    torch.testing.assert_close(x_t, math.sqrt(0.72) * x0 + math.sqrt(0.28) * noise)

    t = 2  # q(x1 | x2, x0) ∝ N(x2; sqrt(a2) x1, b2) N(x1; sqrt(abar1) x0, 1 - abar1)
    a2, b2, abar1 = 0.7, 0.3, 0.72
    precision = a2 / b2 + 1 / (1 - abar1)
    x2 = torch.tensor([[0.3, -0.1]])
    expected_mean = (math.sqrt(a2) / b2 * x2 + math.sqrt(abar1) / (1 - abar1) * x0) / precision
    mean, variance = q_posterior(x0, x2, torch.tensor([t]), SMALL)
    torch.testing.assert_close(mean, expected_mean.float())
    assert float(variance[0]) == pytest.approx(1 / precision, rel=1e-12)
    # At t = 0 the posterior is the data itself.
    mean0, variance0 = q_posterior(x0, x2, torch.tensor([0]), SMALL)
    torch.testing.assert_close(mean0, x0)
    assert float(variance0[0]) == 0.0
    eps = (x_t - math.sqrt(0.72) * x0) / math.sqrt(0.28)
    torch.testing.assert_close(predict_x0(x_t, eps, torch.tensor([1]), SMALL), x0)


def test_respacing_keeps_abar_at_the_kept_steps():
    schedule = make_schedule("linear")
    kept, sub = schedule.respaced(50)
    assert len(kept) == 50 and int(kept[0]) == 0 and int(kept[-1]) == 999
    torch.testing.assert_close(sub.alphas_cumprod, schedule.alphas_cumprod[kept])
    full_kept, full = schedule.respaced(1000)
    torch.testing.assert_close(full.betas, schedule.betas)
    with pytest.raises(ValueError, match="sampling steps"):
        schedule.respaced(0)


def exact_eps(point: torch.Tensor, schedule: DDPMSchedule):
    """The optimal eps-predictor for data that is always `point`:
    eps = (x_t - sqrt(abar) point) / sqrt(1 - abar), the model time mapped back to t."""
    def eps_fn(x, time):
        t = torch.round(time * schedule.num_steps).long().expand(x.shape[0])
        abar = schedule.alphas_cumprod[t].to(x.dtype)[:, None]
        return (x - abar.sqrt() * point) / (1 - abar).sqrt()
    return eps_fn


def test_eps_loss_is_zero_for_the_true_noise_and_positive_otherwise():
    schedule = make_schedule("cosine")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(10, 4, generator=g)
    segment = torch.tensor([0] * 4 + [1] * 6)
    counts = torch.tensor([4, 6])

    def true_eps(x_t, time):  # recover eps from x_t with the known x0 and each sample's t
        t = torch.round(time * schedule.num_steps).long()[segment]
        abar = schedule.alphas_cumprod[t].float()[:, None]
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    loss, per_sample, t = ddpm_training_loss(true_eps, x0, segment, counts, schedule,
                                             torch.Generator().manual_seed(1))
    assert t.shape == (2,) and float(loss) < 1e-8 and float(per_sample.max()) < 1e-8
    loss, _, _ = ddpm_training_loss(lambda x, time: torch.zeros_like(x), x0, segment, counts,
                                    schedule, torch.Generator().manual_seed(1))
    assert 0.5 < float(loss) < 2.0  # E|eps|^2 = 1


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1000, 50, 7])
def test_samplers_recover_a_point_mass(kind, steps):
    schedule = make_schedule(kind)
    point = torch.tensor([[0.5, -0.25, 0.8]])
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    out = ddpm_sample(exact_eps(point, schedule), noise, schedule, steps,
                      torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, point.expand(5, 3), atol=1e-4, rtol=0)
    out = ddim_sample(exact_eps(point, schedule), noise, schedule, steps)
    torch.testing.assert_close(out, point.expand(5, 3), atol=1e-4, rtol=0)


def test_ancestral_sampler_adds_noise_and_clips_x0():
    """With eps = 0 everywhere x0 = x_t / sqrt(abar) explodes at high noise; clipping keeps
    every prediction in [-1, 1], and two generators give two different samples."""
    schedule = make_schedule("linear")
    noise = torch.full((4, 2), 3.0)
    zero = lambda x, time: torch.zeros_like(x)  # noqa: E731
    a = ddpm_sample(zero, noise, schedule, 20, torch.Generator().manual_seed(0), clip_x0=True)
    b = ddpm_sample(zero, noise, schedule, 20, torch.Generator().manual_seed(1), clip_x0=True)
    assert float(a.abs().max()) <= 1.0 + 1e-6 and not torch.equal(a, b)


def test_model_time_and_guidance():
    assert model_time(torch.tensor([0, 500, 999]), 1000).tolist() == pytest.approx([0, 0.5, 0.999])
    c, u = torch.tensor([1.0]), torch.tensor([0.5])
    assert float(guided_eps(c, u, 1.0)) == 1.0 and float(guided_eps(c, u, 3.0)) == 2.0
