"""Generation speed of the procedural concept scenes on one CPU core.

Usage: ``python benchmarks/bench_scenes.py [--n64 N] [--n224 N]``; prints one JSON object with
images/s (wall clock and process CPU time) for ``render_scene`` and ``ConceptScenes.__getitem__``
at 64 and 224 px, single process.
"""

from __future__ import annotations

import os

# Pin BLAS/OpenMP to one thread before numpy/torch load, so the numbers are single-core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from stellar.data.scenes import ConceptScenes, render_scene  # noqa: E402


def _rate(fn, n: int) -> dict[str, float]:
    fn(0)  # warm-up: first-call allocations and lazy imports
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(1, n + 1):
        fn(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n64", type=int, default=1000, help="images timed at 64 px")
    parser.add_argument("--n224", type=int, default=200, help="images timed at 224 px")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict[str, object] = {"threads": 1}
    for size, n in ((64, args.n64), (224, args.n224)):
        ds = ConceptScenes(size=size, length=n + 1, seed=0)
        result[f"render_scene_{size}"] = _rate(lambda i, s=size: render_scene(0, i, s), n)
        result[f"dataset_getitem_{size}"] = _rate(ds.__getitem__, n)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
