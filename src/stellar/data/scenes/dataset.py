"""The concept scenes as a map-style dataset, and their export as a labelled image folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from stellar.data.scenes.geometry import SHAPES
from stellar.data.scenes.render import BACKGROUNDS, COLOURS, FILLS, SPLITS, render_scene
from stellar.outputs import atomic_write, check_fresh, output_folder, remove

logger = logging.getLogger(__name__)


class ConceptScenes(Dataset):
    """``length`` procedurally rendered concept scenes (no files needed): item ``i`` is
    ``render_scene(seed, i, size, split=split, max_objects=max_objects)`` plus the keys the
    training pipeline expects, ``canvas`` (3, size, size) uint8, ``size`` (2,) int64 =
    (height, width) and ``index`` () int64."""

    def __init__(
        self,
        size: int = 64,
        length: int = 10000,
        seed: int = 0,
        split: str = "train",
        max_objects: int = 4,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        self.size, self.length, self.seed = int(size), int(length), int(seed)
        self.split, self.max_objects = split, int(max_objects)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)  # a sampler may hand a 0-dim tensor
        if not 0 <= index < self.length:
            raise IndexError(
                f"index {index} out of range for ConceptScenes of length {self.length}"
            )
        item = render_scene(
            self.seed, index, self.size, split=self.split, max_objects=self.max_objects
        )
        item["canvas"] = item.pop("image_uint8")
        item["size"] = torch.tensor([self.size, self.size], dtype=torch.int64)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


# Where an export puts the images, the semantic and the instance masks (same relative paths).
EXPORT_FOLDERS: tuple[str, str, str] = ("images", "masks", "instances")


def export_scenes(
    out_dir: str | Path,
    split: str = "val",
    n: int = 1000,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` scenes of a split as a labelled image folder.

    Layout under ``out_dir``: ``images/<shape_name>/<index>.png`` (RGB; the folder name is the
    main-shape label, so it loads as an image-classification folder; only shapes that occur get
    a folder), ``masks/<shape_name>/<index>.png`` (uint8 ``semantic_mask``: 0 background,
    1 + shape class) and ``instances/<shape_name>/<index>.png`` (uint8 ``instance_mask``),
    ``labels.jsonl`` (one JSON object per image with every label and the relative file paths,
    written last) and ``classes.json`` (class-name tuples). ``images/`` + ``masks/`` is the
    simple layout ``stellar eval seg`` reads (``--num-classes`` 1 + the number of shapes).
    ``<index>`` is zero-padded to at least 6 digits. Item ``i`` equals
    ``ConceptScenes(size, n, seed, split)[i]``. The folder is held through
    :func:`stellar.outputs.output_folder`; one that holds an export is refused unless
    ``overwrite``, which deletes it first.
    """
    from stellar.progress import progress_bar

    ds = ConceptScenes(size=size, length=n, seed=seed, split=split)
    with output_folder(out_dir, "stellar scenes") as out:
        # Exporting over an earlier export would leave its images beside the new labels.
        remove(
            check_fresh(
                out, [*EXPORT_FOLDERS, "classes.json", "labels.jsonl"], overwrite, "an export"
            )
        )
        classes = json.dumps({"shapes": SHAPES, "colours": COLOURS, "fills": FILLS}, indent=1)
        atomic_write(out / "classes.json", lambda tmp: tmp.write_text(classes + "\n"))
        width = max(6, len(str(max(n - 1, 0))))
        records = []
        for i in progress_bar(range(n), desc=f"export {split} scenes"):
            item = ds[i]
            shape_name = SHAPES[int(item["label"])]
            paths = [f"{d}/{shape_name}/{i:0{width}d}.png" for d in EXPORT_FOLDERS]
            for path in paths:
                (out / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(item["canvas"].permute(1, 2, 0).numpy()).save(out / paths[0])
            Image.fromarray(item["semantic_mask"].to(torch.uint8).numpy()).save(out / paths[1])
            Image.fromarray(item["instance_mask"].to(torch.uint8).numpy()).save(out / paths[2])
            count = int(item["count"])
            record = {
                "index": i,
                "split": split,
                "seed": seed,
                "size": size,
                "image": paths[0],
                "semantic_mask": paths[1],
                "instance_mask": paths[2],
                "label": int(item["label"]),
                "shape_name": shape_name,
                "count": count,
                "shapes": [k for k, on in enumerate(item["shapes"].tolist()) if on],
                "colours": [k for k, on in enumerate(item["colours"].tolist()) if on],
                "object_shapes": item["object_shapes"][:count].tolist(),
                "object_colours": item["object_colours"][:count].tolist(),
                "object_fills": item["object_fills"][:count].tolist(),
                "object_areas": item["object_areas"][:count].tolist(),
                "background": BACKGROUNDS[int(item["background"])],
            }
            records.append(json.dumps(record) + "\n")
        atomic_write(out / "labels.jsonl", lambda tmp: tmp.write_text("".join(records)))
    logger.info("exported %d %s scenes (%d px) to %s", n, split, size, out)
    return out
