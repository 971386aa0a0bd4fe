"""The demo's report: tables, computed verdicts (pass criteria in docs/CONCEPTS.md), report.md."""

from __future__ import annotations

import platform
import shlex
from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor

from stellar.demo.ablation import PAPER, orderings
from stellar.demo.stats import gap_with_stderr, gap_words
from stellar.demo.training import DemoSettings
from stellar.outputs import atomic_write

SUPERVISED = "supervised reference"
OPTIONAL = ("ablation", "progress", "overrides")
"""The settings a report's Command line names only when they are set."""

COLUMNS = {
    "linear_top1": "linear probe top-1 (sparse)",
    "knn_top1": "kNN top-1",
    "linear_colour_top1": "colour probe top-1 (sparse)",
    "seg_miou": "seg. probe mIoU",
    "localization": "concept localization IoU",
    "psnr": "reconstruction PSNR",
}
ABLATION_COLUMNS = ("psnr", "linear_top1", "seg_miou", "localization", "linear_colour_top1")
"""The ablation table's columns: the paper's (PSNR standing for rFID), then the demo's."""

ALWAYS = ("localization", "psnr")
"""Verdicts STELLAR must pass whatever the supervised reference shows."""
PROBES = ("linear_top1", "knn_top1", "linear_colour_top1", "seg_miou")
"""Verdicts that count only where the supervised reference learns the probe."""
INVARIANCE = {"sparse": "sparse_matched", "dense": "dense_mean", "lowrank": "lowrank_mean"}
"""The report's crop-invariance columns: the distances of ``run_invariance`` they show."""
FIGURES = {
    "concepts_scenes.png": "Concept maps and reconstructions on validation scenes",
    "loss_curves.png": "Training losses",
}
"""The pictures ``stellar demo`` draws, and their captions in the report."""
TRANSFORMS = {"flip": "flip", "shift 1": "shift 1 patch", "shift 2": "shift 2 patches"}
"""The transforms of the equivariance partition (``run_invariance``'s names) and their labels."""


def _cell(key: str, value: float | None) -> str:
    """A metric in its unit (dB for PSNR, else %); – where it was not measured."""
    if value is None:
        return "–"
    return f"{value:.1f} dB" if key == "psnr" else f"{value * 100:.1f} %"


def _ratio(distance: dict[str, float]) -> float:
    """Crop distance / between-scene distance (NaN when the scenes are not apart)."""
    between = distance["between"]
    return distance["mean"] / between if between > 0 else float("nan")


def _markdown(head: list[str], rows: dict[str, list[str]]) -> str:
    """A markdown table: the first column names the row, the others are right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return "\n".join(lines + [f"| {name} | " + " | ".join(r) + " |" for name, r in rows.items()])


def table(results: dict[str, dict]) -> str:
    rows = {name: [_cell(k, m.get(k)) for k in COLUMNS] for name, m in results.items()}
    return _markdown(["model", *COLUMNS.values()], rows)


def ablation_table(results: dict[str, dict]) -> str:
    """One row per trained variant: this demo's numbers, then the paper's (rFID / lin. / ADE)."""
    rows = {}
    for name in (n for n in PAPER if n in results):
        m = results[name]
        ratio = _ratio(m["invariance"]["distances"][INVARIANCE["sparse"]])
        paper = " / ".join("–" if v is None else f"{v:g}" for v in PAPER[name])
        rows[name] = [*(_cell(k, m[k]) for k in ABLATION_COLUMNS), f"{ratio:.2f}", paper]
    head = ["variant", *(COLUMNS[k] for k in ABLATION_COLUMNS), "S crop/between"]
    return _markdown([*head, "paper rFID / linear / ADE mIoU"], rows)


def verdicts(
    results: dict[str, dict],
    samples: dict[str, dict[str, Tensor]],
    chance: dict[str, Tensor],
    seed: int = 0,
) -> list[str]:
    """Plain-language checks of what the numbers show (computed, never assumed), from the
    metrics and per-sample values of each model and those of feature-free predictions
    (``chance``)."""
    trained, random = samples["STELLAR"], samples["random init"]
    lines = []
    for key in (*ALWAYS, *PROBES):
        gap, se = gap_with_stderr(key, trained[key], random[key], seed)
        learnable = ""
        if key in PROBES:
            learnt, se_ref = gap_with_stderr(key, samples[SUPERVISED][key], chance[key], seed)
            if learnt <= 2 * se_ref:
                lines.append(
                    f"- not learnable at this scale: {key} (the supervised reference is "
                    f"{gap_words(key, learnt, se_ref)} from chance); STELLAR "
                    f"{_cell(key, results['STELLAR'][key])} vs random init "
                    f"{_cell(key, results['random init'][key])}"
                )
                continue
            learnable = (
                f"; learnable here: the supervised reference is "
                f"{gap_words(key, learnt, se_ref)} above chance"
            )
        lines.append(
            f"- {'PASS' if gap > 2 * se else 'FAIL'}: trained beats random init on {key} by "
            f"{gap_words(key, gap, se)}{learnable}"
        )
    return lines


def equivariance_section(results: dict[str, dict]) -> list[str]:
    """The partition table (share of ΔZ carried by L in the midpoint split; cosine change of
    S) and the claim."""
    eqs = {name: m["invariance"]["equivariance"] for name, m in results.items()}
    rows = {
        name: [
            f"{eq[t]['l_share_mid'] * 100:.0f} % / {eq[t]['s_cos_change']:.3f}" for t in TRANSFORMS
        ]
        for name, eq in eqs.items()
    }
    head = ["model", *(f"{label}: L share / S cos. change" for label in TRANSFORMS.values())]
    eq, eq0 = eqs["STELLAR"], eqs["random init"]
    holds = all(eq[t]["l_share_mid"] > max(0.5, eq0[t]["l_share_mid"]) for t in TRANSFORMS)
    shares, shares0 = (
        ", ".join(f"{label} {e[t]['l_share_mid'] * 100:.0f} %" for t, label in TRANSFORMS.items())
        for e in (eq, eq0)
    )
    return [
        "",
        _markdown(head, rows),
        "",
        f"STELLAR's claim (S stays put, L carries the change) "
        f"{'holds' if holds else 'does NOT hold'} here: L carries {shares} of the change of Z "
        "(holds when above 50 % and above random init's on every transform).",
        f"Random init: {shares0} (what an untrained factorization already gives; only a share "
        "above it is learnt).",
    ]


def invariance_section(results: dict[str, dict]) -> list[str]:
    """Crop-vs-scene distances, the between-scene distances and their ratio per model."""
    rows = {}
    for name, m in results.items():
        inv = (m["invariance"]["distances"][d] for d in INVARIANCE.values())
        rows[name] = [f"{d['mean']:.4f} / {d['between']:.4f} = {_ratio(d):.2f}" for d in inv]
    head = ["model", *(f"{k}: crop / between = ratio" for k in INVARIANCE)]
    return ["", _markdown(head, rows)]


FLAGS = [f.name for f in fields(DemoSettings) if f.name not in OPTIONAL]
"""The settings every report's Command line names, in their order."""


def full_command(settings: DemoSettings) -> str:
    """The ``stellar demo`` command with every flag and override that made this report."""
    parts = ["stellar", "demo"]
    for name in FLAGS:
        parts += [f"--{name.replace('_', '-')}", str(getattr(settings, name))]
    parts += ["--ablation"] * settings.ablation + ["--no-progress"] * (not settings.progress)
    return " ".join(shlex.quote(p) for p in [*parts, *settings.overrides])


def write_report(
    out: Path,
    results: dict,
    lines: list[str],
    timings: dict,
    settings: DemoSettings,
    samples: dict[str, dict[str, Tensor]],
) -> None:
    """``report.md`` with the tables, verdicts, definitions and figures."""
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    text = [
        "# STELLAR demo report",
        "",
        f"Command: `{full_command(settings)}` ({machine}).",
        "Each model was trained from scratch on procedural concept scenes (64 px) and compared "
        "with its own random initialisation (the same weights before step 1). The supervised "
        "reference is the same encoder from the same weights, trained on the same scenes for "
        "the same updates with labels (shape and colour of the largest object): what this "
        "architecture can learn in this budget. A – was not measured (a decoder that was "
        "never trained).",
        "",
        table(results),
        "",
        *lines,
        "",
        "## What vs where: the equivariance partition",
        "",
        "The change of Z = L·S under a horizontal flip and shifts by whole patches, split "
        "exactly into (ΔL)·S̄ and L̄·(ΔS) (100 validation scenes): the share carried by L, and "
        "the mean cosine change of the concept tokens S (token k against token k).",
        *equivariance_section(results),
        "",
        "## Semantic invariance under random crops",
        "",
        "Cosine distance between a random crop (30-100 % of the area, 4 per scene, 100 "
        "validation scenes) and its full scene, for the concept set S (optimal matching), the "
        "dense grid and the low-rank map (both mean-pooled), next to the distance between "
        "different scenes; ratio = crop / between (1: a crop is as far as another scene).",
        *invariance_section(results),
        "",
    ]
    if settings.ablation:
        text += [
            "## Ablation (the paper's table, the demo's budget)",
            "",
            ablation_table(results),
            "",
            *orderings(results, samples),
            "",
        ]
    text += [
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
        "",
        "Definitions: linear probe / kNN predict the shape of the largest object from the mean "
        f"concept token ({settings.eval_train} training scenes, {settings.eval_val} validation "
        "scenes of another seed); the colour probe is the same linear probe predicting the "
        "largest object's colour (10 classes); the segmentation probe predicts background + 8 "
        "shapes per pixel from the dense grid; concept localization is the mean over objects "
        "of the best IoU between a token's map thresholded at 1/r and the object's mask "
        "(`stellar.demo.concepts`, docs/CONCEPTS.md). Standard errors are those of the paired "
        "gap over the validation scenes (a bootstrap over scenes for mIoU); chance is the "
        "majority class of the probes' training scenes (background everywhere for segmentation).",
        "",
    ]
    for path, caption in FIGURES.items():
        text += [f"## {caption}", "", f"![{caption}]({path})", ""]
    model = shlex.quote(str(out / "train-stellar"))
    text += [f"Your own photos: `stellar viz --model {model} --images PHOTOS --out VIZ`.", ""]
    report = "\n".join(text)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(report))
