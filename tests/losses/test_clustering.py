"""Sinkhorn targets of cluster logits and the soft cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stellar.losses.objective import clustering_targets, cross_entropy_soft


def test_clustering_targets_flatten_batch_dims() -> None:
    logits = torch.randn(3, 4, 10, requires_grad=True)
    targets = clustering_targets(logits, sk_temp=0.1, n_iterations=2)
    assert targets.shape == (3, 4, 10) and not targets.requires_grad
    from stellar.losses.objective import sinkhorn_knopp

    flat = sinkhorn_knopp(logits.detach().reshape(12, 10) / 0.1, n_iterations=2)
    torch.testing.assert_close(targets, flat.reshape(3, 4, 10), atol=0, rtol=0)


def test_cross_entropy_soft_reference_and_grad() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    targets = torch.softmax(torch.randn(2, 5, 7), -1)
    loss = cross_entropy_soft(logits, targets, temp=0.5)
    ref = F.cross_entropy(logits.reshape(10, 7) / 0.5, targets.reshape(10, 7))
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=0)
    loss.backward()
    assert logits.grad is not None
    assert cross_entropy_soft(logits.bfloat16(), targets).dtype == torch.float32
    with pytest.raises(ValueError):  # rows are never paired by broadcasting
        cross_entropy_soft(logits, targets[:, :4])
