"""Multi-head self-attention with a fused qkv projection and PyTorch's SDPA kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Above this many attention scores per call (1 GiB in fp32) the written-out product would hold
# too much memory (e.g. a large inference batch at high resolution): SDPA's kernel then.
MAX_WRITTEN_OUT_SCORES = 2**28


def written_out(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / √d) v as matmuls around an fp32 softmax (all scores in memory)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.float().softmax(dim=-1).to(v.dtype) @ v


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / √d) v over (B, H, N, d) heads.

    SDPA's kernels everywhere but bf16 on CPU, where its flash kernel is 2-4x slower than
    :func:`written_out` (forward + backward at our shapes; ``benchmarks/bench_attention.py``),
    as long as the scores fit :data:`MAX_WRITTEN_OUT_SCORES`.
    """
    small = q.shape[:-1].numel() * k.shape[-2] <= MAX_WRITTEN_OUT_SCORES
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and small:
        return written_out(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Self-attention over a token sequence.

    q, k and v come from one fused ``Linear(dim, 3*dim)`` (one GEMM instead of three); the
    checkpoint mapping splits and joins it to the separate query/key/value tensors of the
    official HF-ViT layout.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D/H)
        out = attend(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
