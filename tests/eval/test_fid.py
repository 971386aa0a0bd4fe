"""FID Inception layout, strict loading and FID maths, with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from stellar.eval.fid import FIDInceptionV3, fid_from_features, load_fid_inception

# shapes fixed by the pytorch-fid weights file (torchvision Inception-v3 naming)
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
}
# torchvision inception_v3 has 27,161,264 parameters; minus the aux head (3,326,696) and the
# 1000-way fc (2,049,000) leaves the FID feature extractor's count
FEATURE_PARAMS = 27_161_264 - 3_326_696 - 2_049_000


def _random_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # the pytorch-fid file may lack the counters
        if k.endswith("conv.weight"):
            state[k] = torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=g) * 0.1
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    return state


def test_layout_facts():
    model = FIDInceptionV3()
    sd = model.state_dict()
    for k, shape in KNOWN_SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    assert sum(p.numel() for p in model.parameters()) == FEATURE_PARAMS
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool


def test_loads_strictly_and_extracts(tmp_path):
    state = _random_state()
    torch.save(state, tmp_path / "pt_inception.pth")
    model = load_fid_inception(tmp_path / "pt_inception.pth")
    assert torch.equal(
        model.Mixed_6c.branch7x7_3.conv.weight, state["Mixed_6c.branch7x7_3.conv.weight"]
    )
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 48, 40, generator=g)
    with torch.no_grad():
        f = model(x)
        assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()
        assert f.std() > 0
        # already-299 inputs are not altered by the resize
        x299 = torch.nn.functional.interpolate(x[:1], size=(299, 299), mode="bilinear")
        torch.testing.assert_close(model(x299), f[:1], rtol=1e-4, atol=1e-5)

    bad = dict(state, **{"AuxLogits.fc.weight": torch.zeros(1)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="AuxLogits"):
        load_fid_inception(tmp_path / "bad.pth")
    short = {k: v for k, v in state.items() if k != "Mixed_5c.branch1x1.bn.running_mean"}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="Mixed_5c.branch1x1.bn.running_mean"):
        load_fid_inception(tmp_path / "short.pth")


def test_fid_from_features():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 24, generator=g)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-8)
    fake = torch.randn(150, 24, generator=g) * 1.5 + 0.3
    # independent numpy / scipy computation
    r, f = real.double().numpy(), fake.double().numpy()
    mu1, mu2 = r.mean(0), f.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    ref = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1 + s2)
        - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    )
    assert fid_from_features(real, fake) == pytest.approx(ref, rel=1e-6)
    assert fid_from_features(real, real + 1.0) == pytest.approx(24.0, rel=1e-6)
    few = torch.randn(8, 24, generator=g, dtype=torch.float64)  # a rank-deficient covariance
    f = few.numpy()
    s2 = np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - f.mean(0)) ** 2) + np.trace(s1 + s2) - 2 * np.trace(covmean)
    assert fid_from_features(real, few) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def _samples_with(mean: torch.Tensor, root: torch.Tensor, n: int, g: torch.Generator):
    """(n, d) samples whose sample mean is ``mean`` and unbiased covariance ``root @ root.T``,
    exactly up to round-off: whitened noise, then moved and shaped."""
    z = torch.randn(n, mean.numel(), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # identity covariance
    return mean + z @ root.T


def test_fid_matches_the_closed_form_of_commuting_gaussians():
    """For covariances diagonal in one basis the Fréchet distance is
    |mu1 - mu2|^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2."""
    g = torch.Generator().manual_seed(0)
    d = 6
    mu1, mu2 = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(2))
    v1, v2 = (torch.rand(d, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    expected = ((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    for basis in (torch.eye(d, dtype=torch.float64), q):  # diagonal, then rotated
        real = _samples_with(mu1, basis @ torch.diag(v1.sqrt()), 50, g)
        fake = _samples_with(mu2, basis @ torch.diag(v2.sqrt()), 40, g)
        assert fid_from_features(real, fake) == pytest.approx(expected.item(), rel=1e-6)
