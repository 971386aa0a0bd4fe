"""Attention forward + backward: SDPA's kernel against the written-out product, as JSON lines.

Why ``stellar.layers.attention.attend`` writes the product out for bf16 on CPU: one line per
shape (the demo's encoder, the reference configuration's, ViT-B/16 at 224 px), both dtypes.

    python benchmarks/bench_attention.py --iters 10
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import emit, environment, time_steps

from stellar.layers.attention import written_out

# (name, batch of sequences, heads, tokens, head width)
SHAPES = (
    ("cpu-demo encoder", 128, 4, 70, 24),
    ("reference encoder", 128, 3, 80, 64),
    ("ViT-B/16 224 px, batch 8", 8, 12, 213, 64),
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    for name, batch, heads, tokens, width in SHAPES:
        for dtype_name, dtype in DTYPES.items():
            qkv = [
                torch.randn(
                    batch, heads, tokens, width, device=device, dtype=dtype
                ).requires_grad_()
                for _ in range(3)
            ]
            ms = {}
            for kernel, fn in (("sdpa", F.scaled_dot_product_attention), ("written", written_out)):

                def step(fn=fn, qkv=qkv) -> None:
                    fn(*qkv).float().sum().backward()

                ms[kernel] = round(1000 * time_steps(step, device, args.warmup, args.iters), 2)
            emit(
                {
                    "bench": "attention_fwd_bwd",
                    "shape": name,
                    "dtype": dtype_name,
                    "ms_sdpa": ms["sdpa"],
                    "ms_written_out": ms["written"],
                    **environment(device),
                }
            )


if __name__ == "__main__":
    main()
