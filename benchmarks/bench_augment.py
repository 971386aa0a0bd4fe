"""Throughput of the on-device multi-view augmentation; prints one JSON object.

Example:
    python benchmarks/bench_augment.py --batch 32 --device cpu
    python benchmarks/bench_augment.py --batch 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stellar.data.augment import MultiViewAugment, ViewPlan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--canvas", type=int, default=256)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--n-global", type=int, default=8)
    p.add_argument("--n-local", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    aug = MultiViewAugment(args.global_size, args.local_size, args.n_local)
    # the views of a training step: n_global coloured masked views and n_local local views
    step = ViewPlan(masked=args.n_global, local=args.n_local)
    gen = torch.Generator(device=device).manual_seed(0)
    canvas = torch.randint(0, 256, (args.batch, 3, args.canvas, args.canvas), dtype=torch.uint8)
    canvas = canvas.to(device)
    lo = args.canvas // 2
    size = torch.randint(lo, args.canvas + 1, (args.batch, 2), device=device)
    size[:, 0] = args.canvas  # longer side fills the canvas, as ImageFolder delivers it

    t_views = _time(lambda: aug.make(canvas, size, step, gen), args.iters, args.warmup, device)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "canvas": args.canvas,
        "global": [args.n_global, args.global_size],
        "local": [args.n_local, args.local_size],
        "seconds_per_batch": round(t_views, 5),
        "images_per_s": round(args.batch / t_views, 2),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
