"""The demo's pictures: concept maps of scenes, loss curves."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch
from PIL import Image

from stellar.data.scenes import ConceptScenes
from stellar.models.stellar import STELLAR
from stellar.viz.maps import argmax_segmentation, compose_panel, concept_overlay, to_pil

NOT_LOSSES = ("step", "epoch", "lr", "images_per_s", "grad_norm")
"""The columns of ``metrics.jsonl`` that are not loss terms."""


@torch.no_grad()
def scene_figure(models: dict[str, STELLAR], val: ConceptScenes, n: int = 6) -> Image.Image:
    """Per scene: input, then per model its argmax concepts, concept maps and reconstruction."""
    images = torch.stack([val[i]["image"] for i in range(n)])
    rows = []
    outputs = {name: (m.forward_encode(images), m) for name, m in models.items()}
    grid = (images.shape[-2] // next(iter(models.values())).patch_size,) * 2
    for i in range(n):
        row = [(images[i], "input")]
        for name, (out, m) in outputs.items():
            rec = m.reconstruct({k: v[i : i + 1] for k, v in out.items()})["reconstruction"][0]
            row += [
                (argmax_segmentation(out["spatial"][i], grid, 64), f"{name}: concepts"),
                (concept_overlay(images[i], out["spatial"][i], grid), f"{name}: maps > 1/r"),
                (rec, f"{name}: reconstruction"),
            ]
        rows.append([(to_pil(img).resize((128, 128), Image.NEAREST), cap) for img, cap in row])
    return compose_panel(rows, title="Validation concept scenes (never seen in training)")


def loss_figure(runs: dict[str, Path]) -> Image.Image:
    """Loss curves of each training run, one matplotlib panel per term (non-finite points left
    out; the total loss on a log axis when it is positive)."""
    from matplotlib.figure import Figure  # imported on use: `import stellar` stays light

    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, folder in runs.items():
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            for term, value in row.items():
                if term not in NOT_LOSSES and math.isfinite(value):
                    curves.setdefault(term, {}).setdefault(name, []).append((row["step"], value))
    order = sorted(curves, key=lambda term: (term != "loss", term))
    cols, rows = min(4, len(order)), math.ceil(len(order) / 4)
    fig = Figure(figsize=(3.6 * cols, 2.2 * rows + 0.3), dpi=100, layout="tight")
    fig.suptitle("Training losses", fontsize=10)
    for i, term in enumerate(order):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_title(term, fontsize=9)
        ax.tick_params(labelsize=7)
        for name, points in curves[term].items():
            ax.plot(*zip(*points, strict=True), label=name, linewidth=1.5)
        if term == "loss" and min(y for pts in curves[term].values() for _, y in pts) > 0:
            ax.set_yscale("log")
        ax.legend(fontsize=7, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return Image.open(buffer).convert("RGB")
