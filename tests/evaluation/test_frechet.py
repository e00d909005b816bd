"""The Fréchet distance against closed forms: diagonal covariances, a pure shift, identical sets,
a rotated pair, and singular covariances (fewer samples than dimensions)."""

import math

import pytest
import torch

from megagoku.evaluation.frechet import (frechet_distance, frechet_distance_from_stats,
                                         gaussian_fit, trace_sqrt_product)


def test_diagonal_covariances_match_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.5, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert expected == pytest.approx(0.25 + 4.0 + (4.0 + 1.0 + 0.0))
    got = frechet_distance_from_stats(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_identical_sets_are_at_distance_zero_and_a_shift_costs_its_square():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g) @ torch.randn(16, 16, generator=g)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.zeros(16)
    shift[3] = 2.0
    assert frechet_distance(x, x + shift) == pytest.approx(4.0, rel=1e-7)


def test_rotated_covariance_against_the_commuting_closed_form():
    """S2 = R diag(b) R^T and S1 = R diag(a) R^T commute: tr sqrt(S1 S2) = sum sqrt(a b)."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.1, 7.0], dtype=torch.float64)
    b = torch.tensor([4.0, 0.3, 1.0, 2.0, 0.1, 1.0], dtype=torch.float64)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    assert float(trace_sqrt_product(s1, s2)) == pytest.approx(float((a * b).sqrt().sum()),
                                                              rel=1e-10)
    mu = torch.zeros(6, dtype=torch.float64)
    fd = frechet_distance_from_stats(mu, s1, mu, s2)
    assert fd == pytest.approx(float(((a.sqrt() - b.sqrt()) ** 2).sum()), rel=1e-9)


def test_non_commuting_covariances_match_a_hand_computed_2x2():
    """S1 = diag(1, 0) (a line along x), S2 = a line along (1, 1)/sqrt(2) with variance 2:
    S1 S2 = [[1, 1], [0, 0]], whose square root has trace 1; FD = 1 + 2 - 2 = 1."""
    s1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    s2 = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert float(trace_sqrt_product(s1, s2)) == pytest.approx(1.0, abs=1e-7)
    assert frechet_distance_from_stats(torch.zeros(2), s1, torch.zeros(2), s2) == \
        pytest.approx(1.0, abs=1e-7)


def test_fewer_samples_than_dimensions_and_the_symmetry():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(10, 32, generator=g), torch.randn(12, 32, generator=g) + 0.5
    fd_ab, fd_ba = frechet_distance(a, b), frechet_distance(b, a)
    assert math.isfinite(fd_ab) and fd_ab > 0
    assert fd_ab == pytest.approx(fd_ba, rel=1e-7)


def test_gaussian_fit_is_the_unbiased_estimate():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    mu, cov = gaussian_fit(x)
    torch.testing.assert_close(mu, torch.tensor([3.0, 6.0], dtype=torch.float64))
    torch.testing.assert_close(cov, torch.tensor([[4.0, 8.0], [8.0, 16.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_fit(x[:1])
