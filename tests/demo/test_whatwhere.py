"""The demo's equivariance partition and crop invariance on a tiny model."""

from __future__ import annotations

import pytest
import torch

from stellar import create_stellar
from stellar.data.scenes import ConceptScenes
from stellar.demo.whatwhere import TRANSFORMS, crop_invariance, equivariance_scores


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_stellar("stellar-tiny").eval()


@pytest.fixture(scope="module")
def val():
    return ConceptScenes(64, 8, seed=0, split="val")


def test_equivariance_scores_are_shares_and_cosine_changes(model, val):
    scores = equivariance_scores(model, val, n=8)
    assert list(scores) == [t[0] for t in TRANSFORMS]
    for s in scores.values():
        assert 0 <= s["l_share"] <= 1 and 0 <= s["s_cos_change"] <= 2
        assert s["relative_change"] > 0


def test_a_model_whose_concepts_ignore_the_image_puts_every_change_in_l(model, val):
    # Concept tokens that do not depend on the image cannot change: ΔS = 0, L carries all.
    fixed = torch.randn(1, 6, 96, generator=torch.Generator().manual_seed(0))

    class FixedConcepts(torch.nn.Module):
        patch_size = model.patch_size

        def forward_encode(self, images):
            out = model.forward_encode(images)
            out["sparse"] = fixed.expand_as(out["sparse"]).clone()
            return out

    for s in equivariance_scores(FixedConcepts(), val, n=8).values():
        assert s["l_share"] == pytest.approx(1.0) and s["s_cos_change"] == pytest.approx(
            0, abs=1e-6
        )


def test_crop_invariance_ratio_is_crop_over_between_scene_distance(model, val):
    inv = crop_invariance(model, val, seed=0, n=8, k=2)
    assert set(inv) == {"sparse", "dense", "lowrank"}
    for d in inv.values():
        assert d["between"] > 0 and d["ratio"] == pytest.approx(d["crop"] / d["between"])
    # The same seed gives the same crops.
    assert crop_invariance(model, val, seed=0, n=8, k=2) == inv
