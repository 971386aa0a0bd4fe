"""``stellar retrieve``: concept retrieval, the nearest concept tokens to a query token.

The k indexed tokens (:mod:`stellar.viz.token_index`) most similar to the query token are
drawn, each image with the matched token's map overlaid. A saved index is reused only for the
model (its weights fingerprint), shapes, ``--data`` folder and ``--resolution`` it records.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from stellar.data.folder import EvalImages
from stellar.errors import UsageError, nonneg_int, positive_int
from stellar.eval.common import add_encoding, write_json
from stellar.eval.common import resolution as eval_resolution
from stellar.eval.encoder import Encoder, encode_batch, encode_batches, make_loader
from stellar.images import open_image, preprocess
from stellar.outputs import atomic_write, output_folder
from stellar.runtime import pick_device
from stellar.viz.maps import compose_panel, concept_overlay, to_pil
from stellar.viz.token_index import (
    INDEX_FILE,
    TokenIndex,
    build_token_index,
    index_differences,
    query_index,
)

logger = logging.getLogger(__name__)


def neighbour_tiles(
    found: list[tuple[Tensor, Tensor, int, float, str]], grid: tuple[int, int]
) -> list[tuple[Image.Image, str]]:
    """Retrieved tokens ``(image (3, H, W), spatial (n, r), token, similarity, name)``, best
    first, as captioned 160 px tiles with the token's region overlaid (``stellar retrieve``'s
    figure and the explorer's gallery)."""
    return [
        (_tile(image, spatial, grid, token), f"#{i + 1} sim {sim:.3f} t{token} {name}")
        for i, (image, spatial, token, sim, name) in enumerate(found)
    ]


def _tile(image: Tensor, spatial: Tensor, grid: tuple[int, int], token: int) -> Image.Image:
    photo = to_pil(image).resize((160, 160), Image.Resampling.BICUBIC)
    return concept_overlay(photo, spatial, grid, tokens=[token], alpha=0.4)


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_encoding(parser, num_workers=4)
    parser.add_argument("--data", default=None, help="image folder (or file) to index")
    parser.add_argument("--query", required=True, help="the query image file")
    parser.add_argument(
        "--token", type=nonneg_int, required=True, help="concept token index of the query"
    )
    parser.add_argument("--k", type=positive_int, default=8, help="number of neighbours")
    parser.add_argument("--out", required=True, help="output folder (figure, results.json)")


def _draw(
    model: Encoder,
    index: TokenIndex,
    rows: Tensor,
    scores: Tensor,
    q_image: Tensor,
    q_spatial: Tensor,
    token: int,
    grid: tuple[int, int],
) -> tuple[Image.Image, list[dict[str, object]]]:
    """The figure of the query token's map and its neighbours' (re-encoded from their files),
    and one record per neighbour (a file unreadable now is listed, not drawn)."""
    image_ids = index.image[rows].tolist()
    present = [i for i in sorted(set(image_ids)) if Path(index.paths[i]).is_file()]
    by_image = {}
    if present:
        files = EvalImages([index.paths[i] for i in present], q_image.shape[-1], resize_ratio=1.0)
        found = encode_batches(model, make_loader(files, 16), ["spatial"], keep_images=True)
        if found["paths"]:  # files that no longer decode are not drawn either
            encoded = zip(found["indices"].tolist(), found["images"], found["spatial"], strict=True)
            by_image = {present[i]: (image.float() / 255, spatial) for i, image, spatial in encoded}
    results, records = [], []
    for rank_, (row, sim, img) in enumerate(
        zip(rows.tolist(), scores.tolist(), image_ids, strict=True)
    ):
        tok = int(index.token[row])
        path = index.paths[img]
        records.append({"rank": rank_ + 1, "similarity": round(sim, 6), "token": tok, "path": path})
        if img not in by_image:
            logger.warning("cannot draw %s (unreadable now); listed in results.json only", path)
            continue
        results.append((*by_image[img], tok, sim, Path(path).name))
    q_tile = _tile(q_image, q_spatial, grid, token)
    cells = neighbour_tiles(results, grid)
    rows_of_4 = [cells[i : i + 4] for i in range(0, len(cells), 4)]
    return compose_panel([[(q_tile, f"query: token {token}")], *rows_of_4]), records


def run(args: argparse.Namespace) -> int:
    """Run ``stellar retrieve`` (its encoding under ``--precision``, set by :mod:`stellar.cli`)."""
    from stellar.hub import inspect_model, load_model

    # Every argument is checked before the weights are read or anything is indexed (numbers:
    # by argparse).
    q_photo = open_image(args.query)
    info = inspect_model(args.model)  # the architecture from the header, not the weights
    r, p = info.config.num_sparse_tokens, info.config.encoder.patch_size
    if not 0 <= args.token < r:
        raise UsageError(f"expected --token in [0, {r}), got {args.token}")
    resolution = eval_resolution(args, info)
    # How --data is recorded in and compared with an index: its resolved path.
    data = str(Path(args.data).resolve()) if args.data is not None else None
    with output_folder(args.out, "stellar retrieve", inputs=[args.data]) as out:
        index_dir = out / "index"  # reused by a later run into the same --out
        index = TokenIndex.load(index_dir) if (index_dir / INDEX_FILE).is_file() else None
        if index is None and args.data is None:
            raise UsageError(f"expected --data to build an index (none in {index_dir})")
        # scans --data: a saved index must hold its files
        dataset = EvalImages(args.data, resolution, resize_ratio=1.0) if args.data else None

        device = pick_device(args.device)
        torch.manual_seed(0)  # a random-init preset gets the same weights in every rank and run
        model = load_model(args.model, purpose="encode", device=device)
        if index is not None:
            data = data or index.meta.get("data")
            if args.resolution is None:
                resolution = index.meta.get("resolution")
            files = dataset.files_id if dataset is not None else None
            differ = index_differences(index, model, resolution, data, files)
            if differ:
                raise UsageError(
                    f"the index in {index_dir} was built with --model {index.meta.get('model')} "
                    f"and other settings ({'; '.join(differ)}), so it cannot be reused: pass a "
                    f"new --out to build another, or delete {index_dir / INDEX_FILE} to rebuild it"
                )
            logger.info("reusing the index of %d tokens in %s", len(index), index_dir)
        else:
            index = build_token_index(
                model, dataset, args.batch_size, args.num_workers, model_spec=str(args.model),
                data=data,
            )  # fmt: skip
            index.save(index_dir)
            logger.info(
                "indexed %d tokens of %d images in %s", len(index), len(index.paths), index_dir
            )
        grid = (resolution // p, resolution // p)

        q_image = preprocess(q_photo, resolution)[0]
        q_out = encode_batch(model, q_image[None], ["sparse", "spatial"])
        q_vec = q_out["sparse"][0, args.token].float().cpu()
        scores, rows = query_index(index, q_vec, args.k)

        q_spatial = q_out["spatial"][0].float().cpu()
        figure, records = _draw(model, index, rows, scores, q_image, q_spatial, args.token, grid)
        atomic_write(out / "retrieval.png", lambda tmp: figure.save(tmp, format="PNG"))
        summary = {
            "query": args.query,
            "token": args.token,
            "model": args.model,
            "results": records,
        }
        write_json(out / "results.json", summary)
        print(f"{'rank':>4} {'sim':>7} {'token':>5}  image")
        for x in records:
            print(f"{x['rank']:>4} {x['similarity']:>7.4f} {x['token']:>5}  {x['path']}")
        logger.info("wrote %s", out / "retrieval.png")
    return 0
