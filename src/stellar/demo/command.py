"""``stellar demo``: watch STELLAR learn on a laptop CPU, no data or weights needed (what it
trains, compares and reports: the README's "The demo" and docs/CONCEPTS.md)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path

from torch.utils.data import Subset

from stellar.demo.ablation import ABLATIONS, RECON_ONLY
from stellar.demo.evaluate import chance_samples, eval_scenes, evaluate
from stellar.demo.figures import loss_figure, scene_figure
from stellar.demo.report import FIGURES, SUPERVISED, full_command, table, verdicts, write_report
from stellar.demo.supervised import train_supervised
from stellar.demo.training import DemoSettings, resolve_budget, train_variant
from stellar.errors import nonneg_int, positive_int
from stellar.eval.common import write_json
from stellar.eval.invariance import run_invariance
from stellar.outputs import atomic_write, output_folder

logger = logging.getLogger(__name__)

# Never evaluated for PSNR: their decoders receive no training.
NO_RECONSTRUCTION = (SUPERVISED, "A: no reconstruction")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    parser.add_argument(
        "--out", default=d.out, help="output folder (report.md, metrics.json, PNGs)"
    )
    parser.add_argument("--seed", type=nonneg_int, default=d.seed, help="of the whole demo")
    for flag, text in (
        ("steps", "training steps (preset: 960)"),
        ("batch-size", "per step (preset: 32)"),
        ("eval-train", "scenes used to fit the probes"),
        ("eval-val", "validation scenes"),
        ("probe-epochs", "of the linear probes"),
        ("seg-epochs", "of the segmentation probe"),
    ):
        default = getattr(d, flag.replace("-", "_"))
        parser.add_argument(f"--{flag}", type=positive_int, default=default, help=text)
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also train the paper's ablation variants A-D with the same budget (~25 min)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no bars")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="training-recipe changes for every variant, key=value as in `stellar train` "
        "(e.g. 'augment.color={hue: 0.5}')",
    )


def run(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in DemoSettings.__annotations__}
    settings = DemoSettings(**given | {"overrides": tuple(args.overrides)})
    result = run_demo(settings)
    print(result["table"])
    print(f"report: {Path(settings.out) / 'report.md'}")
    return 0


def _timed(timings: dict[str, float], name: str, started: float) -> None:
    timings[name] = time.perf_counter() - started
    logger.info("demo: %s took %.0f s", name, timings[name])


def run_demo(settings: DemoSettings) -> dict:
    """Train, evaluate, draw and report; returns metrics, timings and the table."""
    settings = resolve_budget(settings)
    with output_folder(settings.out, "stellar demo") as out:
        variants = {"STELLAR": []} | (ABLATIONS if settings.ablation else {})
        logger.info("demo: %s", full_command(settings))
        timings: dict[str, float] = {}
        models, runs = {}, {}
        for name, extra in variants.items():
            start = time.perf_counter()
            folder = "stellar" if name == "STELLAR" else name.split(":")[0].lower()
            trained, initial, run_dir = train_variant(settings, folder, extra)
            if name == "STELLAR":
                models["random init"] = initial
            models[name], runs[name] = trained, run_dir
            _timed(timings, f"train {name}", start)
        start = time.perf_counter()
        models[SUPERVISED] = train_supervised(settings)
        _timed(timings, "supervised reference", start)
        order = ["random init", "STELLAR", SUPERVISED, *list(ABLATIONS)]
        models = {name: models[name] for name in order if name in models}

        start = time.perf_counter()
        train_scenes, val_scenes = eval_scenes(settings)
        results, samples = {}, {}
        what_where = Subset(val_scenes, range(min(100, len(val_scenes))))  # docs/CONCEPTS.md
        for name, model in models.items():
            metrics, samples[name] = evaluate(
                model, train_scenes, val_scenes, settings, reconstruct=name not in NO_RECONSTRUCTION
            )
            metrics["invariance"] = run_invariance(
                model, what_where, n_crops=4, shifts=(1, 2), batch_size=100,
                seed=settings.seed, progress=False,
            )  # fmt: skip
            results[name] = metrics
        chance = chance_samples(train_scenes, val_scenes)
        lines = verdicts(results, samples, chance, settings.seed)
        _timed(timings, "evaluate", start)

        shown = ["random init", "STELLAR"] + ([RECON_ONLY] if settings.ablation else [])
        figures = [scene_figure({k: models[k] for k in shown}, val_scenes), loss_figure(runs)]
        for name, figure in zip(FIGURES, figures, strict=True):
            atomic_write(out / name, lambda tmp, f=figure: f.save(tmp, format="PNG"))
        metrics = {
            "command": full_command(settings),
            "settings": asdict(settings),
            "results": results,
            "timings_s": timings,
            "verdicts": lines,
        }
        write_json(out / "metrics.json", metrics)
        write_report(out, results, lines, timings, settings, samples)
        return {"results": results, "timings": timings, "table": table(results)}
