"""Encode throughput (images/s) and peak memory of a STELLAR preset, printed as JSON.

Random weights; the numbers measure the architecture, not a checkpoint.

    python benchmarks/bench_encode.py --model stellar-tiny --batch 64
    python benchmarks/bench_encode.py --model stellar-b16 --batch 256 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse

import torch
from common import emit, environment, peak_memory_mib, reset_peak_memory, time_steps

from stellar import create_stellar

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stellar-tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=None, help="default: model's native")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="bf16 = autocast")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = create_stellar(args.model).to(device)
    size = args.resolution or model.config.encoder.image_size
    images = torch.rand(args.batch, 3, size, size, device=device)
    encode = torch.compile(model.forward_encode) if args.compile else model.forward_encode

    @torch.inference_mode()
    def step() -> None:
        with torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32"):
            encode(images)

    reset_peak_memory(device)
    seconds = time_steps(step, device, args.warmup, args.iters)
    emit(
        {
            "bench": "encode",
            "model": args.model,
            "batch": args.batch,
            "resolution": size,
            "dtype": args.dtype,
            "compile": args.compile,
            "images_per_s": round(args.batch / seconds, 2),
            "ms_per_batch": round(seconds * 1000, 2),
            "peak_memory_mib": round(peak_memory_mib(device), 1),
            **environment(device),
        }
    )


if __name__ == "__main__":
    main()
