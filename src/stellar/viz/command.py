"""``stellar viz``: one figure per image with its concept maps, PCA pictures and reconstruction.

Figures are ``OUT/<nnnn>_<name>.png`` (:func:`render_figure`); ``metrics.json`` lists them (what
``--overwrite`` replaces).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from stellar.data.folder import EvalImages
from stellar.eval.common import add_encoding, format_table, write_json
from stellar.eval.common import resolution as eval_resolution
from stellar.eval.encoder import decodable_batches
from stellar.outputs import atomic_write, check_fresh, output_folder, remove
from stellar.runtime import autocast, pick_device
from stellar.viz.maps import compose_panel, concept_views, to_pil

if TYPE_CHECKING:
    from stellar.hub import ModelInfo


logger = logging.getLogger(__name__)


def load_for_viz(
    spec: str,
    vq_model: str | None = None,
    device: torch.device | str | None = None,
    info: ModelInfo | None = None,
) -> tuple[Any, str | None]:
    """``(model, why)``: ``spec`` with its decoder, or encoder-only with the reason in ``why``
    when its header shows no decoder, or a vq head and no ``vq_model`` given or recorded by its
    run; anything else that goes wrong raises, since a silently missing panel would hide it."""
    from stellar.hub import inspect_model, load_model, recorded_tokenizer

    info = info if info is not None else inspect_model(spec)
    if info.config.decoder_head == "vq":  # a run's own tokenizer, as in load_stellar
        vq_model = vq_model or recorded_tokenizer(spec)
    why = None
    if vq_model is None:
        if not info.has_decoder:
            why = f"{spec} carries no reconstruction decoder"
        elif info.config.decoder_head == "vq":
            why = "the decoder predicts MaskGIT-VQGAN codes: pass --vq-model to draw them"
    if why is not None:
        logger.warning("no reconstruction: %s", why)
    torch.manual_seed(0)  # a random-init preset gets the same weights in every rank and run
    purpose = "encode" if why else "reconstruct"
    return load_model(spec, purpose=purpose, vq_model=vq_model, device=device), why


def render_figure(
    image: Tensor,
    encoded: dict[str, Tensor],
    grid: tuple[int, int],
    reconstruction: Tensor | None = None,
    cell: int = 256,
    title: str | None = None,
) -> Image.Image:
    """The figure of one ``image`` (3, H, W) in [0, 1], ``cell`` px panels: the input, argmax
    concepts, regions above 1/r, PCA of ``dense`` and ``lowrank`` (n, d), ``reconstruction``
    (3, H, W; None leaves it out), and below one heat map per token of ``spatial`` (n, r) on the
    patch ``grid`` (h, w), all from ``encoded``."""
    spatial = encoded["spatial"]
    r = spatial.shape[-1]
    per_row = min(r, max(8, math.ceil(math.sqrt(r))))
    panels = 5 + (reconstruction is not None)
    token_cell = max(48, (panels * (cell + 6)) // per_row - 4 * 2)
    views = concept_views(
        image, spatial, encoded["dense"], encoded["lowrank"], grid, cell,
        token_cell=token_cell, cols=per_row,
    )  # fmt: skip
    row = [
        (views["photo"], "input"),
        (views["argmax"], "argmax concept"),
        (views["concepts"], f"concept maps > 1/{r}"),
        (views["pca_dense"], "PCA dense"),
        (views["pca_lowrank"], "PCA low-rank"),
    ]
    if reconstruction is not None:
        rec = to_pil(reconstruction).resize((cell, cell), Image.Resampling.BICUBIC)
        row.append((rec, "reconstruction"))
    strip = (views["tokens"], "per-token maps (scaled to each peak; band: the token's colour)")
    return compose_panel([row, [strip]], title=title)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_encoding(parser, batch_size=8)
    parser.add_argument(
        "--images", required=True, nargs="+", help="image files and/or folders (recursive)"
    )
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--vq-model", default=None, help="MaskGIT-VQGAN weights (vq-head models)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the figures of an earlier viz in --out"
    )


def _listed_figures(metrics: list[Path]) -> list[Path]:
    """The figures earlier ``metrics.json`` files list, never other files of the folder (an
    unreadable one lists none)."""
    try:
        return [
            m.parent / Path(r["figure"]).name
            for m in metrics
            for r in json.loads(m.read_text())["images"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run(args: argparse.Namespace) -> int:
    """Run ``stellar viz`` (its encoding under ``--precision``, set by :mod:`stellar.cli`)."""
    from stellar.hub import inspect_model

    # Every argument is checked before the model's weights are read (numbers: by argparse).
    info = inspect_model(args.model)  # config and decoder presence from the header only
    p = info.config.encoder.patch_size
    resolution = eval_resolution(args, info)
    dataset = EvalImages(args.images, resolution, resize_ratio=1.0, crop=True)  # scans --images
    with output_folder(args.out, "stellar viz", inputs=args.images) as out_dir:
        old = check_fresh(out_dir, ["metrics.json"], args.overwrite, "an earlier viz's figures")
        earlier = _listed_figures(old)
        device = pick_device(args.device)
        model, why = load_for_viz(args.model, args.vq_model, device, info)
        cell = min(max(resolution, 160), 448)  # the panel side: wide enough for its title
        grid = (resolution // p, resolution // p)
        grid_text = f"{grid[0]}x{grid[1]}"
        model_name = Path(str(args.model)).name
        records: list[dict[str, Any]] = []
        for batch in decodable_batches(dataset, args.batch_size, args.num_workers, desc="viz"):
            with torch.inference_mode(), autocast(device):
                images = batch["image"].to(device)
                out = model.encode(images)
                rec = model.reconstruct(out, grid=grid)["reconstruction"] if why is None else None
            out = {k: out[k].float().cpu() for k in ("spatial", "dense", "lowrank")}
            rec = rec.float().cpu() if rec is not None else None
            owners = out["spatial"].argmax(-1)  # (B, n): the token each patch belongs to
            peaks = out["spatial"].amax(1).mean(-1)  # (B,): the mean over tokens of their peak
            for b, (index, path) in enumerate(
                zip(batch["index"].tolist(), batch["path"], strict=True)
            ):
                stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)
                name = f"{index:04d}_{stem}.png"
                figure = render_figure(
                    batch["image"][b],
                    {k: v[b] for k, v in out.items()},
                    grid,
                    rec[b] if rec is not None else None,
                    cell,
                    title=f"{Path(path).name} | {model_name} | {resolution}px, grid {grid_text}",
                )
                atomic_write(out_dir / name, lambda tmp, f=figure: f.save(tmp, format="PNG"))
                records.append(
                    {
                        "path": path,
                        "figure": name,
                        "tokens_owning_patches": len(owners[b].unique()),
                        "mean_peak": round(float(peaks[b]), 4),
                    }
                )
        summary = {
            "model": str(args.model),
            "resolution": resolution,
            "grid": list(grid),
            "num_tokens": model.num_tokens,
            "reconstruction": None if why is None else f"omitted: {why}",
            "images": records,
        }
        write_json(out_dir / "metrics.json", summary)
        written = {r["figure"] for r in records}
        remove(p for p in earlier if p.is_file() and p.name not in written)  # replaced
        r = model.num_tokens
        columns = [
            ("figure", lambda x: x["figure"]),
            ("tokens owning patches", lambda x: f"{x['tokens_owning_patches']}/{r}"),
            ("mean peak", lambda x: f"{x['mean_peak']:.3f}"),
            ("image", lambda x: x["path"]),
        ]
        print(format_table(columns, records))
        logger.info("wrote %d figures and metrics.json to %s", len(records), out_dir)
    return 0
