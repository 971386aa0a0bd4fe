"""``stellar demo``: watch STELLAR learn on a laptop CPU, no data or weights needed.

Trains the ``cpu-demo`` preset on procedural concept scenes (ground truth of "what" and
"where" known), evaluates the trained model next to its own random initialisation (and, with
``--ablation``, a reconstruction-only variant), and writes ``report.md``, ``metrics.json``
and pictures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from stellar.demo.evaluate import eval_scenes, evaluate
from stellar.demo.figures import default_photos, loss_figure, photo_figure, scene_figure
from stellar.demo.report import table, verdicts, write_report
from stellar.demo.settings import DemoSettings
from stellar.demo.training import RECON_ONLY, train_variant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stellar demo``."""
    d = DemoSettings()
    parser.add_argument(
        "--out", default=d.out, help="output folder (report.md, metrics.json, PNGs)"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--steps", type=int, default=None, help="training steps (preset: 480)")
    parser.add_argument("--batch-size", type=int, default=None, help="per step (preset: 32)")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also train the reconstruction-only variant with the same budget",
    )
    parser.add_argument(
        "--eval-train", type=int, default=d.eval_train, help="scenes used to fit the probes"
    )
    parser.add_argument("--eval-val", type=int, default=d.eval_val, help="validation scenes")
    parser.add_argument("--probe-epochs", type=int, default=d.probe_epochs)
    parser.add_argument("--seg-epochs", type=int, default=d.seg_epochs)
    parser.add_argument(
        "--photos",
        default=None,
        help="folder of real photos for concept maps (default: "
        "../shared/data/imagenet-samples/images224 when present)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="training-recipe changes for every variant, key=value as in `stellar train` "
        "(e.g. 'augment.color={hue: 0.5}')",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the table."""
    given = {k: v for k, v in vars(args).items() if k in DemoSettings.__annotations__}
    settings = DemoSettings(**given | {"overrides": tuple(args.overrides)})
    result = run_demo(settings)
    print(result["table"])
    print(f"report: {Path(settings.out) / 'report.md'}")
    return 0


def run_demo(settings: DemoSettings) -> dict:
    """Train, evaluate, draw and report; returns metrics, timings and the table."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    trained, initial, run_dir = train_variant(settings, "stellar", [])
    timings["train"] = time.perf_counter() - start
    models = {"random init": initial, "STELLAR": trained}
    runs = {"STELLAR": run_dir}
    if settings.ablation:
        start = time.perf_counter()
        ablated, _, ablated_dir = train_variant(settings, "recon-only", RECON_ONLY)
        timings["train recon-only"] = time.perf_counter() - start
        models["recon only"] = ablated
        runs["recon only"] = ablated_dir
    for m in models.values():
        m.eval()
    start = time.perf_counter()
    train_scenes, val_scenes = eval_scenes(settings)
    results = {name: evaluate(m, train_scenes, val_scenes, settings) for name, m in models.items()}
    timings["evaluate"] = time.perf_counter() - start

    figures = []
    scene_figure(models, val_scenes).save(out / "concepts_scenes.png")
    figures.append(("concepts_scenes.png", "Concept maps and reconstructions on validation scenes"))
    photos = Path(settings.photos) if settings.photos else default_photos()
    if photos is not None:
        fig = photo_figure({k: models[k] for k in ("STELLAR", "random init")}, photos)
        if fig is not None:
            fig.save(out / "concepts_photos.png")
            figures.append(("concepts_photos.png", "Concept maps on real photos"))
    loss_figure(runs).save(out / "loss_curves.png")
    figures.append(("loss_curves.png", "Training losses"))

    (out / "metrics.json").write_text(
        json.dumps(
            {
                "settings": asdict(settings),
                "results": results,
                "timings_s": timings,
                "verdicts": verdicts(results, settings.eval_val),
            },
            indent=2,
        )
    )
    write_report(out, results, timings, settings, figures)
    return {"results": results, "timings": timings, "table": table(results)}
