"""Segmentation probe and the dataset-level confusion matrix."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from stellar.eval.segmentation import (
    SCHEDULE,
    SegmentationProbe,
    confusion,
    segmentation_scores,
    train_segmentation_probe,
)


def test_hand_computed_confusion_matrix():
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    matrix = confusion(pred, target, 3)
    # rows = target, cols = pred
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    out = segmentation_scores(matrix)
    # class 0: inter 1, union 2 + 2 - 1 = 3; class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1)
    expected = [1 / 3, 2 / 3, 1 / 2]
    np.testing.assert_allclose(out["iou_per_class"].numpy(), expected)
    assert out["miou"] == pytest.approx(sum(expected) / 3)
    assert out["pixel_acc"] == pytest.approx(4 / 6)


def test_perfect_prediction_and_absent_classes():
    target = torch.randint(0, 3, (2, 5, 5))  # classes 3 and 4 never occur
    out = segmentation_scores(confusion(target.clone(), target, 5))
    assert out["miou"] == pytest.approx(1.0) and out["pixel_acc"] == pytest.approx(1.0)
    assert torch.isnan(out["iou_per_class"][3:]).all()
    # a class predicted but absent from the targets counts with IoU 0
    pred = target.clone()
    pred[0, 0, 0] = 4
    out2 = segmentation_scores(confusion(pred, target, 5))
    assert out2["iou_per_class"][4] == 0 and math.isnan(out2["iou_per_class"][3])
    assert out2["miou"] < 1.0
    assert math.isnan(segmentation_scores(torch.zeros(3, 3, dtype=torch.int64))["miou"])


def test_ignore_label_is_ignored():
    target = torch.tensor([[[0, 1, 255, 255]]])
    pred = torch.tensor([[[0, 1, 0, 1]]])
    matrix = confusion(pred, target, 2)
    assert matrix.sum() == 2
    assert segmentation_scores(matrix)["miou"] == pytest.approx(1.0)


def test_accumulation_equals_single_update_not_batch_mean():
    # batch A: class 1 is a single pixel, badly predicted; batch B: large, well predicted.
    ta = torch.tensor([[[0, 0, 0, 1]]])
    pa = torch.tensor([[[0, 0, 1, 0]]])
    tb = torch.tensor([[[1] * 8 + [0] * 8]])
    pb = tb.clone()
    acc = confusion(pa, ta, 2) + confusion(pb, tb, 2)
    whole = confusion(
        torch.cat([pa.flatten(), pb.flatten()]), torch.cat([ta.flatten(), tb.flatten()]), 2
    )
    assert torch.equal(acc, whole)
    per_batch = [segmentation_scores(confusion(p, t, 2))["miou"] for p, t in ((pa, ta), (pb, tb))]
    # dataset-level: class 0 = 10/12, class 1 = 8/10 -> 0.8167; batch mean = (1/3 + 1) / 2
    assert segmentation_scores(acc)["miou"] == pytest.approx((10 / 12 + 8 / 10) / 2)
    assert abs(segmentation_scores(acc)["miou"] - sum(per_batch) / 2) > 0.1


def test_logits_of_tokens():
    probe = SegmentationProbe(8, 4).eval()
    tokens = torch.randn(2, 36, 8)
    a = probe(tokens, (24, 24))
    assert a.shape == (2, 4, 24, 24)
    grid = probe(tokens)
    assert grid.shape == (2, 4, 6, 6)
    # token i of the row-major grid is pixel (i // 6, i % 6) of the logits
    ref = probe.conv(probe.bn(tokens.reshape(2, 6, 6, 8).permute(0, 3, 1, 2)))
    torch.testing.assert_close(grid, ref)


def test_probe_learns_linear_toy_task():
    g = torch.Generator().manual_seed(0)
    n, h, d, c = 48, 8, 16, 4
    w = torch.randn(d, c, generator=g)
    grid = torch.randn(n, h, h, d, generator=g) * 2 + 1  # off-centre: BN has work to do
    masks = (grid @ w).argmax(-1)
    feats = grid.reshape(n, h * h, d)
    masks[:, 0, :] = 255  # an unlabelled row
    train = slice(0, 40)
    val = slice(40, n)
    probe, m = train_segmentation_probe(
        feats[train],
        masks[train],
        feats[val],
        masks[val],
        c,
        replace(SCHEDULE, epochs=20, lr=0.1, batch_size=20),
        progress=False,
    )
    assert m["miou"] > 0.85 and m["pixel_acc"] > 0.9
    # the untrained probe is far from that
    with torch.no_grad():
        untrained = SegmentationProbe(d, c).eval()(feats[val]).argmax(1)
    assert segmentation_scores(confusion(untrained, masks[val], c))["miou"] < 0.6
    # upsampled labels work too (logits resized to the mask size)
    big = masks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    _, m2 = train_segmentation_probe(
        feats[:8],
        big[:8],
        feats[val],
        big[val],
        c,
        replace(SCHEDULE, epochs=1, batch_size=8),
        progress=False,
    )
    assert 0.0 <= m2["miou"] <= 1.0
