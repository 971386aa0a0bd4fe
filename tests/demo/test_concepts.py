"""Concept localization on hand-built maps with known answers."""

from __future__ import annotations

import torch

from stellar.demo.concepts import localization_scores, token_masks


def _one_hot_spatial(assign: torch.Tensor, r: int) -> torch.Tensor:
    """A localisation matrix whose patch rows are one-hot on ``assign`` (B, h, w)."""
    return torch.nn.functional.one_hot(assign.flatten(1), r).float()


def test_a_token_exactly_on_each_object_scores_one():
    grid = torch.zeros(1, 4, 4, dtype=torch.long)
    grid[0, :2, :2] = 1
    grid[0, 2:, 1:] = 2
    spatial = _one_hot_spatial(grid, r=3)
    instances = grid.repeat_interleave(8, 1).repeat_interleave(8, 2)  # 32 x 32 px, 8 px patches
    scores = localization_scores(spatial, (4, 4), instances)
    assert scores.shape == (2,)
    assert torch.all(scores > 0.85)  # bilinear edges soften the patch borders a little


def test_uniform_maps_score_the_object_area_fraction():
    spatial = torch.full((1, 16, 4), 0.25) + torch.tensor([1e-3, 0, 0, 0]) / 16
    spatial = spatial / spatial.sum(-1, keepdim=True)
    instances = torch.zeros(1, 32, 32, dtype=torch.long)
    instances[0, :16, :16] = 1
    score = localization_scores(spatial, (4, 4), instances)
    torch.testing.assert_close(score, torch.tensor([0.25]))


def test_threshold_is_one_over_r():
    spatial = torch.tensor([[[0.6, 0.4], [0.4, 0.6]]])  # 2 patches, r = 2
    masks = token_masks(spatial, (1, 2), (1, 2))
    assert masks.tolist() == [[[[True, False]], [[False, True]]]]


def test_a_single_token_covers_the_image():
    spatial = torch.ones(1, 16, 1)  # r = 1: softmax over one token is 1 everywhere
    instances = torch.zeros(1, 32, 32, dtype=torch.long)
    instances[0, :16, :16] = 1
    score = localization_scores(spatial, (4, 4), instances)
    torch.testing.assert_close(score, torch.tensor([0.25]))
