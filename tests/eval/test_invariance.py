"""Semantic invariance distances and the equivariance partition of ΔZ into L and S parts."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from stellar import create_stellar
from stellar.cli import main
from stellar.eval.invariance import (
    DISTANCES,
    equivariance_partition,
    matched_set_distance,
    run_invariance,
    transform_views,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Images(torch.utils.data.Dataset):
    """EvalImages-like items from a tensor."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "label": torch.tensor(-1),
            "index": torch.tensor(i),
            "path": f"{i}",
        }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_stellar("stellar-tiny").eval()


def test_identity_crops_give_zero_distance(model) -> None:
    images = torch.rand(3, 3, 64, 64, generator=_gen())
    same = run_invariance(model, _Images(images), 4, (1.0, 1.0), progress=False)
    assert set(same["distances"]) == set(DISTANCES) and same["num_images"] == 3
    for name, d in same["distances"].items():
        assert abs(d["mean"]) < 1e-5, name
    small = run_invariance(model, _Images(images), 4, (0.1, 0.3), progress=False)
    for name, d in small["distances"].items():
        assert d["mean"] > 10 * abs(same["distances"][name]["mean"]), name


def test_between_pairs_each_image_with_the_one_before_across_batches(model) -> None:
    images = torch.rand(5, 3, 64, 64, generator=_gen(5))
    one = run_invariance(model, _Images(images), 2, batch_size=1, progress=False)
    whole = run_invariance(model, _Images(images), 2, batch_size=5, progress=False)
    for name in DISTANCES:
        # the pairs (1, 0) .. (4, 3) whatever the batches: never an image with itself
        between = one["distances"][name]["between"]
        # float32 kernels differ with the batch size: equal to float precision, not bit for bit
        assert between > 0
        assert between == pytest.approx(whole["distances"][name]["between"], rel=1e-4)


def test_equivariance_of_concepts_that_ignore_the_image_is_all_in_l(model) -> None:
    images = torch.rand(4, 3, 64, 64, generator=_gen(6))
    fixed = torch.randn(1, 6, 96, generator=_gen(7))

    class FixedConcepts(torch.nn.Module):  # S does not depend on the image: ΔS = 0
        patch_size, feature_keys, device = model.patch_size, model.feature_keys, model.device

        def forward_encode(self, x: torch.Tensor) -> dict:
            out = model.forward_encode(x)
            out["sparse"] = fixed.expand_as(out["sparse"]).clone()
            return out

    result = run_invariance(FixedConcepts(), _Images(images), 2, shifts=(1, 2), progress=False)
    assert list(result["equivariance"]) == ["flip", "shift 1", "shift 2"]
    for shares in result["equivariance"].values():
        assert shares["l_share_mid"] == pytest.approx(1.0)
        assert shares["s_cos_change"] == pytest.approx(0, abs=1e-6)
    moving = run_invariance(model, _Images(images), 2, shifts=(1, 2), progress=False)
    for shares in moving["equivariance"].values():
        assert 0 <= shares["l_share_mid"] <= 1 and shares["s_cos_change"] > 0


def test_matched_distance_is_the_best_permutation() -> None:
    a = torch.randn(5, 4, 8, generator=_gen())
    b = torch.randn(5, 4, 8, generator=_gen(1))
    cost = 1 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)
    brute = torch.stack(
        [
            torch.stack([cost[:, i, list(p)[i]] for i in range(4)], -1).mean(-1)
            for p in itertools.permutations(range(4))
        ]
    ).amin(0)
    torch.testing.assert_close(matched_set_distance(a, b), brute, rtol=1e-5, atol=1e-6)
    shuffled = a[:, torch.randperm(4, generator=_gen(2))]
    torch.testing.assert_close(matched_set_distance(a, shuffled), torch.zeros(5), atol=1e-6, rtol=0)


def test_partition_shares() -> None:
    gen = _gen(3)
    L1 = torch.rand(4, 10, 3, generator=gen).softmax(-1)
    L2 = torch.rand(4, 10, 3, generator=gen).softmax(-1)
    S1, S2 = torch.randn(4, 3, 6, generator=gen), torch.randn(4, 3, 6, generator=gen)
    p = equivariance_partition(L1, S1, L2, S2)
    torch.testing.assert_close(
        p["l_share_mid"] + p["s_share_mid"], torch.ones(4, dtype=torch.float64)
    )
    for k in ("l_share_mid", "s_share_mid"):
        assert bool(((p[k] >= 0) & (p[k] <= 1)).all()), k
    z1 = L1.double() @ S1.double()
    dz = L2.double() @ S2.double() - z1
    change = torch.linalg.matrix_norm(dz) / torch.linalg.matrix_norm(z1)
    torch.testing.assert_close(p["relative_change"], change)
    only_l = equivariance_partition(L1, S1, L2, S1)
    torch.testing.assert_close(only_l["l_share_mid"], torch.ones(4, dtype=torch.float64))
    only_s = equivariance_partition(L1, S1, L1, S2)
    torch.testing.assert_close(only_s["s_share_mid"], torch.ones(4, dtype=torch.float64))
    still = equivariance_partition(L1, S1, L1, S1)
    assert bool(still["l_share_mid"].isnan().all()) and bool((still["relative_change"] == 0).all())


@pytest.mark.parametrize("name", ["flip", "shift"])
def test_transform_alignment(name: str) -> None:
    images = torch.rand(2, 3, 32, 48, generator=_gen(4))
    view, align1, align2 = transform_views(name, images, patch=8, shift=2)

    # a stand-in for L: each patch's mean colour, row-major (B, n, 3); a flip mirrors the
    # pixels inside every patch too, which its mean does not see
    def patches(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 8).flatten(2).transpose(1, 2)

    a, b = align1(patches(images)), align2(patches(view))
    assert a.shape == b.shape == (2, 24 if name == "flip" else 16, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_invariance_command(samples_dir, tmp_path, capsys, monkeypatch) -> None:
    (data := tmp_path / "data").mkdir()
    for p in sorted((samples_dir / "images224").glob("*.jpg"))[:4]:
        os.symlink(p, data / p.name)
    out = tmp_path / "out"
    argv = ["eval", "invariance", "--model", "stellar-tiny", "--data", str(data)]
    assert main([*argv, "--crops", "2", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    (row,) = m["rows"]
    assert row["num_images"] == 4 and set(row["equivariance"]) == {"flip", "shift 1"}
    for shares in row["equivariance"].values():
        s = shares["l_share_mid"] + shares["s_share_mid"]
        assert math.isclose(s, 1.0, abs_tol=1e-6) and 0 <= shares["l_share_mid"] <= 1
    assert all(row["distances"][n]["mean"] >= 0 for n in DISTANCES)
    table = capsys.readouterr().out  # each distance beside its between-images baseline
    d = row["distances"]["sparse_matched"]
    assert f"{d['mean']:.4f} / {d['between']:.4f}" in table
    with pytest.raises(ValueError, match="--scale"):
        main([*argv, "--scale", "0.5", "1.5", "--out", str(out)])
    # a --shift the grid cannot take is refused before any image is encoded
    monkeypatch.setattr("stellar.eval.invariance.run_invariance", _must_not_run)
    with pytest.raises(ValueError, match="--shift of 1 to 7"):  # stellar-tiny's grid is 8 wide
        main([*argv, "--shift", "8", "--out", str(out)])


def _must_not_run(*args, **kwargs):
    raise AssertionError("run_invariance ran before --shift was checked")
