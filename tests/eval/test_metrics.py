"""PSNR against numpy, Fréchet maths against closed forms and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from stellar.eval.metrics import frechet_distance, psnr


def _images(b=3, c=3, h=32, w=27, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g)
    y = (x + 0.1 * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)
    return x, y


def test_psnr_matches_numpy():
    x, y = _images()
    got = psnr(x, y)
    for i in range(x.shape[0]):
        mse = np.mean((x[i].double().numpy() - y[i].double().numpy()) ** 2)
        assert got[i].item() == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-5)
    assert (psnr(x, x) == 100.0).all()  # capped, so one perfect image keeps a finite mean


def test_frechet_diagonal_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 6
    mu1, mu2 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    v1, v2 = torch.rand(d, generator=g) + 0.1, torch.rand(d, generator=g) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()
    got = frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(expected.item(), rel=1e-6)
    # commuting (jointly diagonalisable) covariances: same formula in a rotated basis
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s1, s2 = q @ torch.diag(v1.double()) @ q.T, q @ torch.diag(v2.double()) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-6)
    assert 0.0 <= frechet_distance(mu1, s1, mu1, s1) < 1e-9  # never a tiny negative distance


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    d = 20
    a, b = rng.normal(size=(d, 40)), rng.normal(size=(d, 8))  # the second is rank-deficient
    s1, s2 = a @ a.T / 40, b @ b.T / 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    got = frechet_distance(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-6)
    # float32 inputs are promoted to float64
    got32 = frechet_distance(*(torch.from_numpy(v).float() for v in (mu1, s1, mu2, s2)))
    assert got32 == pytest.approx(ref, rel=1e-4)
