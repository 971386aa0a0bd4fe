"""Sinkhorn-Knopp targets: fixture parity and balancing invariants."""

from __future__ import annotations

import numpy as np
import torch

from stellar.losses.objective import sinkhorn_knopp


def _reference_sinkhorn(scores: np.ndarray, n_iterations: int) -> np.ndarray:
    """Float64 NumPy transcription of the documented algorithm, independent of the torch code."""
    q = np.exp(scores - scores.max(axis=0, keepdims=True) + 50.0)
    for _ in range(n_iterations):
        q = q / (q.sum(axis=0, keepdims=True) + 1e-8)
        q = q / (q.sum(axis=1, keepdims=True) + 1e-8)
    return q


def test_fixture_parity(tiny_io: dict[str, torch.Tensor]) -> None:
    # The fixture input is already temperature-scaled: no division inside the function.
    out = sinkhorn_knopp(tiny_io["sinkhorn.input"], n_iterations=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, tiny_io["sinkhorn.output"], atol=1e-5, rtol=0)


def test_matches_float64_reference() -> None:
    scores = torch.randn(20, 33) * 4
    out = sinkhorn_knopp(scores, n_iterations=4)
    ref = _reference_sinkhorn(scores.double().numpy(), 4)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_rows_sum_to_one_and_columns_balance() -> None:
    scores = torch.randn(64, 16) * 2
    out = sinkhorn_knopp(scores, n_iterations=3)
    torch.testing.assert_close(out.sum(1), torch.ones(64), atol=1e-5, rtol=0)
    assert (out >= 0).all()
    # Many rounds converge to the doubly-balanced solution: every cluster gets N/K mass.
    converged = sinkhorn_knopp(scores, n_iterations=300)
    torch.testing.assert_close(converged.sum(0), torch.full((16,), 4.0), atol=1e-3, rtol=0)
    assert (out.sum(0) - 4.0).abs().max() > (converged.sum(0) - 4.0).abs().max()


def test_invariant_to_column_shifts() -> None:
    scores = torch.randn(10, 12) * 3
    shift = torch.randn(12) * 5
    torch.testing.assert_close(
        sinkhorn_knopp(scores + shift), sinkhorn_knopp(scores), atol=1e-6, rtol=1e-5
    )


def test_bf16_input_runs_in_fp32() -> None:
    scores = (torch.randn(8, 16) * 3).bfloat16()
    out = sinkhorn_knopp(scores)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sinkhorn_knopp(scores.float()), atol=0, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sinkhorn_knopp(scores.float())
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, out, atol=0, rtol=0)


def test_output_is_detached() -> None:
    scores = torch.randn(4, 6, requires_grad=True)
    assert not sinkhorn_knopp(scores).requires_grad
