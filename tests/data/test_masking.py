"""Random masking of masked views: shapes, reproducibility, focal concentration, blocks."""

from __future__ import annotations

import pytest
import torch

from stellar.data.augment import MultiViewAugment, num_kept


def random_masking(
    batch_size,
    grid_h,
    grid_w,
    mask_ratio=0.8,
    focal_mode="gaussian",
    focal_prob=0.5,
    generator=None,
) -> torch.Tensor:
    """The kept patches :meth:`MultiViewAugment.mask` draws for views of a grid_h x grid_w grid."""
    augment = MultiViewAugment(mask_ratio=mask_ratio, focal_mode=focal_mode, focal_prob=focal_prob)
    views = torch.zeros(batch_size, 3, grid_h, grid_w)  # one-pixel patches
    return augment.mask({"masked_views": views}, 1, generator)["keep_idx"]


def _spread(keep: torch.Tensor, grid_w: int) -> torch.Tensor:
    """Per-row spatial variance (rows + cols) of the kept patches."""
    rows = (keep // grid_w).float()
    cols = (keep % grid_w).float()
    return rows.var(dim=1) + cols.var(dim=1)


@pytest.mark.parametrize("mode", ["gaussian", "block", None])
def test_shape_unique_sorted(mode: str | None) -> None:
    keep = random_masking(32, 14, 14, mask_ratio=0.8, focal_mode=mode, focal_prob=0.5)
    assert keep.dtype == torch.int64 and keep.shape == (32, 39)
    assert (keep >= 0).all() and (keep < 196).all()
    assert (keep[:, 1:] > keep[:, :-1]).all()  # strictly ascending => unique


def test_num_kept() -> None:
    assert num_kept(196, 0.8) == 39
    assert num_kept(64, 0.75) == 16
    assert num_kept(10, 0.9) == 1  # float round-off must not drop the last patch
    assert num_kept(10, 0.0) == 10


@pytest.mark.parametrize("ratio", [0.9, 1.0, 1.5])
def test_a_ratio_that_keeps_no_patch_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 2, 2, mask_ratio=ratio)


@pytest.mark.parametrize("mode", ["gaussian", "block", None])
def test_reproducible_with_generator(mode: str | None) -> None:
    def draw(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return random_masking(16, 8, 8, 0.75, focal_mode=mode, generator=gen)

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_gaussian_mode_concentrates_kept_patches() -> None:
    gen = torch.Generator().manual_seed(0)
    uniform = random_masking(512, 14, 14, 0.8, focal_mode=None, generator=gen)
    gen = torch.Generator().manual_seed(0)
    focal = random_masking(512, 14, 14, 0.8, "gaussian", focal_prob=1.0, generator=gen)
    u, f = _spread(uniform, 14).mean().item(), _spread(focal, 14).mean().item()
    # Uniform sampling of a 14x14 grid has variance ~2 * 16.25; focal rows are far tighter.
    assert 30.0 < u < 35.0
    assert f < 0.7 * u
    # focal_prob 0.5 sits in between.
    gen = torch.Generator().manual_seed(0)
    half = random_masking(512, 14, 14, 0.8, "gaussian", focal_prob=0.5, generator=gen)
    h = _spread(half, 14).mean().item()
    assert f + 1.0 < h < u - 1.0


def test_block_mode_keeps_a_square() -> None:
    gen = torch.Generator().manual_seed(1)
    keep = random_masking(64, 8, 8, 0.75, "block", focal_prob=1.0, generator=gen)  # 16 = 4x4
    rows, cols = keep // 8, keep % 8
    top, left = rows.min(1, keepdim=True).values, cols.min(1, keepdim=True).values
    expected = (top + torch.arange(4).repeat_interleave(4)) * 8 + left + torch.arange(4).repeat(4)
    assert torch.equal(keep, expected)
    # Every valid corner can occur (5 x 5 positions on an 8 x 8 grid).
    assert rows.max() <= 7 and cols.max() <= 7 and top.max() >= 3 and left.max() >= 3


def test_block_mode_non_square_count_is_contiguous() -> None:
    gen = torch.Generator().manual_seed(2)
    keep = random_masking(32, 14, 14, 0.8, "block", focal_prob=1.0, generator=gen)  # 39
    rows, cols = keep // 14, keep % 14
    # 39 patches -> 7 columns wide, 5 full rows and one row of 4, starting at the block corner.
    top, left = rows.min(1, keepdim=True).values, cols.min(1, keepdim=True).values
    rank = (rows - top) * 7 + (cols - left)
    assert torch.equal(rank, torch.arange(39).expand(32, 39))


def test_focal_prob_zero_equals_uniform_noise_order() -> None:
    # With no focal rows the result depends only on the noise, like plain uniform masking.
    gen = torch.Generator().manual_seed(5)
    a = random_masking(8, 6, 6, 0.5, "gaussian", focal_prob=0.0, generator=gen)
    gen = torch.Generator().manual_seed(5)
    b = random_masking(8, 6, 6, 0.5, None, generator=gen)
    assert torch.equal(a, b)
