"""KoLeo regulariser: fixture parity, an independent loop reference, invariances."""

from __future__ import annotations

import math

import pytest
import torch

from stellar.losses.objective import koleo_loss


def _reference_koleo(x: torch.Tensor) -> float:
    """Per-token loop in float64, from the docstring's definition."""
    total, count = 0.0, 0
    for img in x.double():
        unit = img / img.norm(dim=-1, keepdim=True)
        for i in range(unit.shape[0]):
            others = [j for j in range(unit.shape[0]) if j != i]
            j = max(others, key=lambda k: float(unit[i] @ unit[k]))
            dist = float((unit[i] - unit[j] + 1e-8).norm())
            total += -math.log(0.5 * dist + 1e-8)
            count += 1
    return total / count


def test_fixture_parity(tiny_io: dict[str, torch.Tensor]) -> None:
    loss = koleo_loss(tiny_io["koleo.input"])
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, tiny_io["koleo.loss"].reshape(()), atol=1e-5, rtol=0)


def test_matches_loop_reference() -> None:
    x = torch.randn(3, 5, 7)
    assert abs(koleo_loss(x).item() - _reference_koleo(x)) < 1e-5


def test_scale_and_permutation_invariant() -> None:
    x = torch.randn(2, 6, 8)
    base = koleo_loss(x)
    torch.testing.assert_close(koleo_loss(3.0 * x), base, atol=1e-6, rtol=0)
    torch.testing.assert_close(koleo_loss(x[:, torch.randperm(6)]), base, atol=1e-6, rtol=0)
    torch.testing.assert_close(koleo_loss(x.flip(0)), base, atol=1e-6, rtol=0)


def test_images_are_independent() -> None:
    # Token 0 of image 1 duplicates token 0 of image 0; across images it must not count.
    x = torch.randn(2, 4, 8)
    x[1, 0] = x[0, 0]
    per_image = torch.stack([koleo_loss(x[i : i + 1]) for i in range(2)]).mean()
    torch.testing.assert_close(koleo_loss(x), per_image, atol=1e-6, rtol=0)


def test_spread_tokens_cost_less_than_clumped() -> None:
    spread = torch.eye(4).unsqueeze(0)  # orthogonal tokens
    clumped = spread + 5.0  # all nearly the same direction
    assert koleo_loss(spread) < koleo_loss(clumped)


def test_gradient_and_bf16() -> None:
    x = torch.randn(2, 5, 8, requires_grad=True)
    koleo_loss(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    xb = x.detach().bfloat16()
    loss = koleo_loss(xb)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, koleo_loss(xb.float()), atol=0, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = koleo_loss(x.detach())
    torch.testing.assert_close(auto, koleo_loss(x.detach()), atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(5, 8), (2, 1, 8)])
def test_rejects_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="B, r, d"):
        koleo_loss(torch.randn(shape))
