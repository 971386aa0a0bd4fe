"""The demo's pictures: concept maps of scenes and photos, loss curves."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import torch
from PIL import Image

from stellar.data.folder import EvalImages
from stellar.data.scenes import ConceptScenes
from stellar.models.stellar import STELLAR
from stellar.viz.maps import argmax_segmentation, compose_panel, concept_overlay, to_pil

logger = logging.getLogger(__name__)

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


def sample_photos(data: EvalImages, n: int) -> list[dict]:
    """Up to ``n`` decodable items spread evenly over ``data``, each file decoded once.

    A folder with fewer than ``n`` images gives all of them; unreadable files are skipped.
    """
    step = max(1, len(data) // n)
    items = []
    for i in range(0, len(data), step):
        item = data[i]
        if item is not None:
            items.append(item)
            if len(items) == n:
                break
    return items


@torch.no_grad()
def photo_figure(
    models: dict[str, STELLAR], folder: Path, n: int = 4, size: int = 128
) -> Image.Image | None:
    """Concept maps of up to ``n`` real photos (positions interpolated to ``size``)."""
    try:
        items = sample_photos(EvalImages(folder, size), n)
    except ValueError as err:
        logger.warning("no photos for the demo figure: %s", err)
        return None
    if not items:
        logger.warning("no photos for the demo figure: no image in %s could be decoded", folder)
        return None
    images = torch.stack([it["image"] for it in items])
    grid = (size // next(iter(models.values())).patch_size,) * 2
    outs = {name: m.forward_encode(images) for name, m in models.items()}
    rows = []
    for i in range(len(items)):
        row = [(images[i], Path(items[i]["path"]).stem[:24])]
        for name, out in outs.items():
            row += [
                (argmax_segmentation(out["spatial"][i], grid, size), f"{name}: concepts"),
                (concept_overlay(images[i], out["spatial"][i], grid), f"{name}: maps"),
            ]
        rows.append(row)
    return compose_panel(rows, title=f"Real photos at {size} px (model trained on 64 px scenes)")


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


def default_photos() -> Path | None:
    """``../shared/data/imagenet-samples/images224`` beside the checkout, if present."""
    found = Path.cwd().parent / "shared/data/imagenet-samples/images224"
    return found if found.is_dir() else None
