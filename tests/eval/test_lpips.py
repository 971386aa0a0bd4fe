"""LPIPS-VGG with random weights saved in the torchvision / lpips v0.1 key layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stellar.eval.lpips import LPIPS, load_lpips

# torchvision vgg16.features: conv layer indices and their (in, out) channels
CONVS = {
    0: (3, 64), 2: (64, 64),
    5: (64, 128), 7: (128, 128),
    10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
POOLS = (4, 9, 16, 23)
TAPS = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)


def _random_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    vgg = {}
    for i, (cin, cout) in CONVS.items():
        vgg[f"features.{i}.weight"] = (
            torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        )
        vgg[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    # torchvision checkpoints also hold the classifier, which LPIPS ignores (kept tiny here)
    vgg["classifier.0.weight"] = torch.zeros(4, 4)
    lin = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
        for k, c in enumerate(TAP_CHANNELS)
    }
    return vgg, lin


@pytest.fixture
def weights(tmp_path):
    vgg, lin = _random_weights()
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    return tmp_path / "vgg16.pth", tmp_path / "vgg.pth", vgg, lin


def _reference_lpips(vgg, lin, x, y):
    """Plain functional LPIPS written from the paper's recipe."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h = ((2 * img - 1) - shift) / scale
        out = []
        for i in range(30):
            if i in CONVS:
                h = F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1)
            elif i in POOLS:
                h = F.max_pool2d(h, 2)
            else:
                h = F.relu(h)
            if i in TAPS:
                out.append(h)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        w = lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total = total + ((a - b) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


def test_matches_reference_and_properties(weights):
    vgg_path, lin_path, vgg, lin = weights
    model = load_lpips(vgg_path, lin_path)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    with torch.no_grad():
        d = model(x, y)
        assert d.shape == (2,)
        torch.testing.assert_close(d, _reference_lpips(vgg, lin, x, y), rtol=1e-4, atol=1e-6)
        assert torch.equal(model(x, x), torch.zeros(2))
        torch.testing.assert_close(model(y, x), d)
        assert (d > 0).all()
        # a stronger perturbation is farther
        z = (x + 0.5 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
        assert (model(x, z) > d).all()
    assert not any(p.requires_grad for p in model.parameters())


def test_state_dict_layout():
    keys = set(LPIPS().state_dict())
    assert {f"lin{k}.model.1.weight" for k in range(5)} <= keys
    assert {f"net.features.{i}.weight" for i in CONVS} <= keys
    assert len(keys) == 5 + 2 * len(CONVS)  # scaling constants are not persisted


def test_strict_loading(weights, tmp_path):
    vgg_path, lin_path, vgg, lin = weights
    bad_lin = dict(lin)
    bad_lin["lin5.model.1.weight"] = torch.zeros(1, 8, 1, 1)
    torch.save(bad_lin, tmp_path / "bad_lin.pth")
    with pytest.raises(ValueError, match="lin5"):
        load_lpips(vgg_path, tmp_path / "bad_lin.pth")
    short_vgg = {k: v for k, v in vgg.items() if k != "features.28.weight"}
    torch.save(short_vgg, tmp_path / "short_vgg.pth")
    with pytest.raises(ValueError, match=r"features\.28\.weight"):
        load_lpips(tmp_path / "short_vgg.pth", lin_path)
    wrong = dict(lin)
    wrong["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"does not fit.*wrong shapes: lin0\.model\.1\.weight"):
        load_lpips(vgg_path, tmp_path / "wrong.pth")
