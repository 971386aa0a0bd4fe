"""Training-step throughput (images/s), peak memory, FLOPs and (on GPU) MFU, as JSON.

One step = multi-view augmentation + masking + the full objective forward/backward + AdamW,
exactly as the trainer runs it (random weights, procedural data).

    python benchmarks/bench_train.py --config cpu-smoke batch_size=16
    python benchmarks/bench_train.py --config vit-b16 --device cuda batch_size=64 \
        data.source=scenes data.scenes_size=224 objective.recon=false [--compile]

Each timed call advances the trainer's step counter, as training does (the lr schedule and
the per-step random generator move on; a compiled step must not recompile for it).
``--versus KEY=VALUE`` (repeatable) measures a second step built with those overrides on
top (the baseline, e.g. ``--versus precision=fp32``) in the same process, alternating
``--rounds`` timed blocks of the two so that machine noise falls on both alike, and reports
both and the speedup (CPU peak memory is the process's, so it is left out of that line, as
are ``--breakdown`` and the MFU: measure those in a single run).
``--breakdown`` adds the mean time per step of each phase (views and masking, main encode,
decoder, heads and Sinkhorn, masked views with the OT matching inside them, local views,
backward, optimizer), from ``torch.profiler`` labels in the step; phases nest, so they do
not sum to the step.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one step (matmuls,
convolutions and attention; forward + backward): the encoder on the main, masked and local
views, the decoder and the clustering heads. MFU = FLOPs / step time / the GPU's dense bf16
peak (``--peak-tflops``; 989 for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import (
    emit,
    environment,
    peak_memory_mib,
    reset_peak_memory,
    synchronize,
    time_steps,
)
from torch.utils.flop_counter import FlopCounterMode

from stellar.losses.objective import PHASE
from stellar.runtime import DistInfo
from stellar.train.config import load_config
from stellar.train.trainer import Trainer


def phase_breakdown(step, device: torch.device, iters: int) -> dict[str, float]:
    """Mean milliseconds per step of each labelled phase over ``iters`` profiled steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iters):
            step()
        synchronize(device)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(PHASE):
            # CPU time of the region; on GPU the device time of its kernels when larger.
            device_us = getattr(event, "device_time_total", 0.0) or 0.0
            us = max(event.cpu_time_total, device_us)
            totals[event.key[len(PHASE) :]] = round(us / 1000 / iters, 2)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def build(args: argparse.Namespace, extra: list[str]) -> tuple[Trainer, Callable[[], None]]:
    """A trainer for ``--config`` + the overrides + ``extra``, and a step that advances it."""
    cfg = load_config(
        args.config,
        [
            *args.overrides,
            "progress=false",
            "tensorboard=false",
            f"compile={str(args.compile).lower()}",
            "out=/tmp/bench-train",
            *extra,
        ],
    )
    trainer = Trainer(cfg, DistInfo(device=torch.device(args.device)))
    batch = next(iter(trainer.loader))

    def step() -> None:
        trainer.train_step([batch])
        trainer.step += 1  # as the training loop does

    return trainer, step


def count_flops(trainer: Trainer, step: Callable[[], None]) -> float:
    """FLOPs of one step, counted on the eager objective.

    A first compiled call under FlopCounterMode would leave dynamo never compiling it, and
    the timed steps would be eager.
    """
    compiled, trainer.step_fn = trainer.step_fn, trainer.objective
    with FlopCounterMode(display=False) as counter:
        step()
    trainer.step_fn = compiled
    return counter.get_total_flops()


def alternate(steps: dict[str, Callable[[], None]], device, args) -> dict[str, float]:
    """Seconds per step of each of ``steps``, timed in alternating blocks of ``--iters``."""
    for step in steps.values():  # warm up both before any timing
        for _ in range(args.warmup):
            step()
    totals = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for name, step in steps.items():
            totals[name] += time_steps(step, device, 0, args.iters)
    return {name: total / args.rounds for name, total in totals.items()}


def describe(trainer: Trainer, seconds: float, flops: float) -> dict:
    cfg = trainer.cfg
    return {
        "precision": str(trainer.autocast_dtype or "fp32"),
        "compile": cfg.compile,
        "images_per_s": round(cfg.batch_size / seconds, 2),
        "ms_per_step": round(1000 * seconds, 1),
        "gflops_per_step": round(flops / 1e9, 1),
        "achieved_tflops": round(flops / seconds / 1e12, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu-smoke")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--breakdown", action="store_true", help="per-phase time per step")
    parser.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also time a baseline step with this override (repeatable), alternating",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating blocks (--versus)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    device = torch.device(args.device)
    trainer, step = build(args, [])
    cfg = trainer.cfg
    result = {
        "bench": "train_step",
        "config": args.config,
        "model": cfg.model,
        "overrides": args.overrides,
        "batch": cfg.batch_size,
        "views": {
            "global": max(1, trainer.plan.masked, 2 if trainer.plan.second else 1),  # crops made
            "masked": cfg.augment.n_masked,
            "local": cfg.augment.n_local,
        },
        **environment(device),
    }
    flops = count_flops(trainer, step)
    if args.versus:
        baseline, baseline_step = build(args, args.versus)
        seconds = alternate({"new": step, "baseline": baseline_step}, device, args)
        result["versus"] = args.versus
        result["rounds"] = args.rounds
        result["baseline"] = describe(
            baseline, seconds["baseline"], count_flops(baseline, baseline_step)
        )
        result.update(describe(trainer, seconds["new"], flops))
        result["speedup"] = round(seconds["baseline"] / seconds["new"], 2)
        emit(result)
        return
    reset_peak_memory(device)
    seconds = time_steps(step, device, args.warmup, args.iters)
    result.update(describe(trainer, seconds, flops))
    result["peak_memory_mib"] = round(peak_memory_mib(device), 1)
    if args.breakdown:
        result["phases_ms_per_step"] = phase_breakdown(step, device, args.iters)
    if device.type == "cuda":
        result["mfu"] = round(flops / seconds / (args.peak_tflops * 1e12), 4)
    emit(result)


if __name__ == "__main__":
    main()
