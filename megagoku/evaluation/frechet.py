"""Fréchet distance between Gaussian fits of two feature sets (the formula of FID and FVD):

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

Numerically careful without scipy: S1 S2 is not symmetric, but it is similar to the symmetric
positive semi-definite M = S1^(1/2) S2 S1^(1/2) (same eigenvalues), so tr((S1 S2)^(1/2)) is the
sum of the square roots of M's eigenvalues. Both square roots come from symmetric eigen-
decompositions in float64, with the round-off negatives of PSD spectra clamped to 0; no complex
parts to discard, and singular covariances (fewer samples than dimensions) are fine.

What the number means here depends on the feature space: with the in-repo classifier's features
(`classifier.py`) it is `fd_shapes3d`, comparable only between runs scored by the same classifier,
and **not FID or FVD**. With few samples it is biased upwards; `megagoku eval` reports the
distance between two independent real sets of the same sizes beside it (the floor).
"""

from __future__ import annotations

import torch


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), in float64, of features (N, D), N >= 2."""
    x = features.detach().to(torch.float64).reshape(len(features), -1)
    if len(x) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {len(x)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (symmetrised first)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """tr((S1 S2)^(1/2)) of two symmetric PSD matrices."""
    root1 = _psd_sqrt(s1.to(torch.float64))
    middle = root1 @ s2.to(torch.float64) @ root1
    values = torch.linalg.eigvalsh((middle + middle.T) / 2)
    return values.clamp(min=0).sqrt().sum()


def frechet_distance_from_stats(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor,
                                s2: torch.Tensor) -> float:
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    s1, s2 = s1.to(torch.float64), s2.to(torch.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature sizes differ: {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) \
        - 2 * trace_sqrt_product(s1, s2)
    return max(float(fd), 0.0)  # round-off can leave -1e-12 for identical sets


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of features (N_a, D) and (N_b, D)."""
    return frechet_distance_from_stats(*gaussian_fit(features_a), *gaussian_fit(features_b))
