"""Weighted kNN against a plain numpy reference of the DINO vote."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stellar.eval import knn
from stellar.eval.knn import knn_accuracy, knn_classify


def _numpy_knn(train, labels, test, num_classes, k, temperature):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = np.zeros((test.shape[0], num_classes))
    for i, q in enumerate(test):
        sims = train @ q
        nearest = np.argsort(-sims)[:k]
        for j in nearest:
            out[i, labels[j]] += np.exp(sims[j] / temperature)
        out[i] /= out[i].sum()
    return out


def _data(n=300, m=40, d=16, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    test = torch.randn(m, d, generator=g, dtype=torch.float64)
    return train, labels, test, c


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_matches_numpy_reference(k, temperature):
    train, labels, test, c = _data()
    ref = _numpy_knn(train.numpy(), labels.numpy(), test.numpy(), c, k, temperature)
    got = knn_classify(train, labels, test, c, k=k, temperature=temperature)
    assert got.shape == (test.shape[0], c)
    np.testing.assert_allclose(got.double().numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=1e-5)


def test_chunk_size_invariance(monkeypatch):
    train, labels, test, c = _data()
    full = knn_classify(train, labels, test, c)
    for budget in (1, 7 * train.shape[0], 600):  # 1, 7 and 2 test rows per chunk
        monkeypatch.setattr(knn, "MAX_SIM_ELEMENTS", budget)
        torch.testing.assert_close(knn_classify(train, labels, test, c), full)


def test_k_larger_than_bank_is_clamped():
    train, labels, test, c = _data(n=6)
    torch.testing.assert_close(
        knn_classify(train, labels, test, c, k=50), knn_classify(train, labels, test, c, k=6)
    )


def test_exact_duplicate_is_its_own_neighbour():
    train, labels, _, c = _data()
    probs = knn_classify(train, labels, train[:25] * 3.0, c, k=1)  # scale-invariant (cosine)
    assert torch.equal(probs.argmax(1), labels[:25])
    assert torch.allclose(probs.max(1).values, torch.ones(25, dtype=probs.dtype))


def test_accuracy_on_clusters_and_topk():
    g = torch.Generator().manual_seed(1)
    c, d = 10, 32
    centres = torch.randn(c, d, generator=g) * 4
    y_train = torch.arange(c).repeat(30)
    y_test = torch.arange(c).repeat(5)
    x_train = centres[y_train] + torch.randn(len(y_train), d, generator=g)
    x_test = centres[y_test] + torch.randn(len(y_test), d, generator=g)
    acc = knn_accuracy(x_train, y_train, x_test, y_test, c)
    assert acc["top1"] > 0.95 and acc["top5"] >= acc["top1"]
    # labels unrelated to the features: near chance, and top5 about 5x top1
    y_rand = torch.randint(0, c, (len(y_train),), generator=g)
    acc_rand = knn_accuracy(x_train, y_rand, x_test, y_test, c)
    assert acc_rand["top1"] < 0.4


def test_top5_never_counts_a_class_without_votes():
    # every query's nearest sample is class 0's; its true class c is second nearest
    c = 10
    train, labels = torch.eye(c), torch.arange(c)
    test = torch.eye(c)[[0] * (c - 1)] + 0.01 * torch.eye(c)[1:]
    truth = torch.arange(1, c)
    # k = 1: only class 0 gets a vote, so the true class is in no top-5, tie at zero or not
    assert knn_accuracy(train, labels, test, truth, c, k=1) == {"top1": 0.0, "top5": 0.0}
    # k = 2: the true class gets the second vote
    assert knn_accuracy(train, labels, test, truth, c, k=2) == {"top1": 0.0, "top5": 1.0}


def test_weights_follow_temperature():
    # two neighbours of different classes: the closer one's share grows as T shrinks
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    labels = torch.tensor([0, 1])
    test = torch.tensor([[1.0, 0.1]])
    hot = knn_classify(train, labels, test, 2, k=2, temperature=10.0)
    cold = knn_classify(train, labels, test, 2, k=2, temperature=0.01)
    assert 0.5 < hot[0, 0] < 0.6 and cold[0, 0] > 0.999


def test_empty_test_set():
    train, labels, _, c = _data()
    assert knn_classify(train, labels, torch.zeros(0, 16, dtype=train.dtype), c).shape == (0, c)
