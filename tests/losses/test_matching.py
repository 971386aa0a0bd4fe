"""Entropic-OT set alignment: fixture parity, image-major grouping, marginals, loss."""

from __future__ import annotations

import pytest
import torch

from stellar.losses.objective import set_alignment_loss, sinkhorn_match


def test_fixture_parity(tiny_io: dict[str, torch.Tensor]) -> None:
    index, plan = sinkhorn_match(tiny_io["match.preds"], tiny_io["match.targets"])
    assert index.dtype == torch.int64 and index.shape == (6, 6)
    assert torch.equal(index, tiny_io["match.index"])
    torch.testing.assert_close(plan, tiny_io["match.plan"], atol=1e-5, rtol=0)


def test_fixture_is_image_major_not_view_major(tiny_io: dict[str, torch.Tensor]) -> None:
    preds, targets = tiny_io["match.preds"], tiny_io["match.targets"]
    # One view at a time against its image p // 3 reproduces the batched result ...
    for p in range(preds.shape[0]):
        index, plan = sinkhorn_match(preds[p : p + 1], targets[p // 3 : p // 3 + 1])
        torch.testing.assert_close(plan[0], tiny_io["match.plan"][p], atol=1e-5, rtol=0)
    # ... while the view-major pairing (image p % 2) does not.
    _, wrong = sinkhorn_match(preds[1:2], targets[1:2])
    assert (wrong[0] - tiny_io["match.plan"][1]).abs().max() > 1e-3


def test_recovers_a_permutation() -> None:
    gen = torch.Generator().manual_seed(3)
    targets = torch.randn(2, 8, 16, generator=gen) * 3
    perms = torch.stack([torch.randperm(8, generator=gen) for _ in range(6)])  # (6, 8)
    img = torch.arange(6) // 3
    preds = targets[img[:, None], perms] + 0.01 * torch.randn(6, 8, 16, generator=gen)
    index, plan = sinkhorn_match(preds, targets)
    assert torch.equal(index, perms)
    # The last update is over predictions, so every target column carries unit mass.
    torch.testing.assert_close(plan.sum(1), torch.ones(6, 8), atol=1e-5, rtol=0)


def test_plan_matches_explicit_reference() -> None:
    preds, targets = torch.randn(4, 5, 6), torch.randn(2, 7, 6)
    index, plan = sinkhorn_match(preds, targets, eps=0.3, n_iterations=2)
    assert index.shape == (4, 5) and plan.shape == (4, 5, 7)
    for p in range(4):
        cost = torch.linalg.vector_norm(
            preds[p].double()[:, None] - targets[p // 2].double()[None], dim=-1
        )
        u, v = torch.zeros(5, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)
        for _ in range(2):
            u = -0.3 * torch.logsumexp(-(cost - v[None]) / 0.3, dim=1)
            v = -0.3 * torch.logsumexp(-(cost - u[:, None]) / 0.3, dim=0)
        ref = torch.exp((u[:, None] + v[None] - cost) / 0.3)
        torch.testing.assert_close(plan[p].double(), ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(index[p], ref.argmax(1))


def test_set_alignment_fixture_parity(tiny_io: dict[str, torch.Tensor]) -> None:
    loss = set_alignment_loss(
        tiny_io["contrastive.logits_pred"], tiny_io["cluster.assignments"], tiny_io["match.index"]
    )
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, tiny_io["contrastive.loss"].reshape(()), atol=1e-5, rtol=0)


def test_set_alignment_loop_reference_and_gradients() -> None:
    logits = torch.randn(4, 3, 10, requires_grad=True)
    targets = torch.softmax(torch.randn(2, 5, 10), -1).requires_grad_()
    index = torch.randint(0, 5, (4, 3))
    loss = set_alignment_loss(logits, targets, index, temp=0.2)
    ref = 0.0
    for p in range(4):
        for i in range(3):
            t = targets[p // 2, index[p, i]]
            ref = ref - (t * torch.log_softmax(logits[p, i] / 0.2, -1)).sum()
    torch.testing.assert_close(loss, ref / 12, atol=1e-6, rtol=0)
    loss.backward()
    assert logits.grad is not None and targets.grad is None


def test_bf16_inputs_give_fp32() -> None:
    preds, targets = torch.randn(4, 5, 6), torch.randn(2, 5, 6)
    index, plan = sinkhorn_match(preds.bfloat16(), targets.bfloat16())
    ref_index, ref_plan = sinkhorn_match(preds.bfloat16().float(), targets.bfloat16().float())
    assert plan.dtype == torch.float32 and torch.equal(index, ref_index)
    torch.testing.assert_close(plan, ref_plan, atol=0, rtol=0)
    logits = torch.randn(4, 5, 9).bfloat16()
    loss = set_alignment_loss(logits, torch.softmax(torch.randn(2, 5, 9), -1), index)
    assert loss.dtype == torch.float32


def test_validation() -> None:
    with pytest.raises(ValueError, match="multiple"):
        sinkhorn_match(torch.randn(5, 3, 4), torch.randn(2, 3, 4))
