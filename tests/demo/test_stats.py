"""The demo's standard errors and per-scene confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch

from stellar.data.scenes import ConceptScenes
from stellar.demo.evaluate import chance_samples, scene_confusions
from stellar.demo.stats import miou_gap, paired_gap, pooled_miou
from stellar.eval.segmentation import confusion, segmentation_scores


def test_paired_gap_is_the_mean_difference_and_its_standard_error():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([0.0, 2.0, 2.0, 4.0])
    gap, se = paired_gap(a, b)
    d = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert gap == pytest.approx(0.5)
    assert se == pytest.approx(float(d.std()) / math.sqrt(4))
    # Pairing removes what both models share: a constant offset has no noise at all.
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert paired_gap(x + 1, x) == pytest.approx((1.0, 0.0), abs=1e-6)


def test_scene_confusions_sum_to_the_dataset_confusion_matrix():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (5, 6, 6), generator=g)
    target = torch.randint(0, 4, (5, 6, 6), generator=g)
    per_scene = scene_confusions(pred, target, 4)
    assert per_scene.shape == (5, 4, 4) and per_scene.sum((1, 2)).tolist() == [36] * 5
    matrix = confusion(pred, target, 4)
    assert torch.equal(per_scene.sum(0), matrix)
    assert pooled_miou(per_scene) == pytest.approx(segmentation_scores(matrix)["miou"])


def test_miou_gap_of_a_model_with_itself_is_zero_and_noisy_gaps_have_spread():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (40, 8, 8), generator=g)
    good = torch.where(torch.rand(40, 8, 8, generator=g) < 0.8, target, 0)
    bad = torch.where(torch.rand(40, 8, 8, generator=g) < 0.4, target, 0)
    a, b = scene_confusions(good, target, 3), scene_confusions(bad, target, 3)
    assert miou_gap(a, a) == (0.0, 0.0)
    gap, se = miou_gap(a, b)
    assert gap == pytest.approx(pooled_miou(a) - pooled_miou(b)) and gap > 4 * se > 0


def test_chance_predicts_the_majority_class_of_the_probe_training_scenes():
    train, val = ConceptScenes(32, 40, seed=3), ConceptScenes(32, 20, seed=0, split="val")
    chance = chance_samples(train, val)
    labels = torch.stack([train[i]["label"] for i in range(40)])
    majority = int(torch.bincount(labels).argmax())
    val_labels = torch.stack([val[i]["label"] for i in range(20)])
    assert torch.equal(chance["linear_top1"], (val_labels == majority).float())
    # Segmentation at chance: background everywhere, so every pixel sits in column 0.
    assert chance["seg_miou"][:, :, 1:].sum() == 0
