"""The model behind the explorer page: loaded once, with its decoder when it can reconstruct,
the collection to search, and the example images.

Without ``--collection`` the collection is a folder of example concept scenes
(:func:`stellar.data.scenes.render_scene`, validation split, at the model's resolution),
written once next to the cached indexes, so every part of the page works out of the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from stellar.data.folder import find_images
from stellar.data.scenes import render_scene
from stellar.errors import UsageError
from stellar.explore.retrieval import CACHE_DIR, Collection
from stellar.outputs import atomic_write, output_folder
from stellar.viz.command import load_for_viz
from stellar.viz.maps import to_pil

MAX_PICKS = 32  # images of the collection offered in the picker


@dataclass
class Explorer:
    """A loaded model (``purpose="reconstruct"`` unless ``why_not`` says why it cannot), the
    searchable ``collection`` and the images offered in the picker."""

    model: Any
    spec: str
    collection: Collection
    picks: list[Path]
    why_not: str | None = None

    @classmethod
    def load(
        cls,
        spec: str,
        collection: str | Path | None = None,
        vq_model: str | None = None,
        device: str | None = None,
        cache_dir: str | Path = CACHE_DIR,
    ) -> Explorer:
        """Load ``spec`` (as every ``--model``) with its decoder when it can reconstruct
        (:func:`~stellar.viz.command.load_for_viz`); example scenes and indexes go to
        ``cache_dir``."""
        found = list(find_images(collection)) if collection and Path(collection).is_dir() else []
        if collection is not None and not found:
            raise UsageError(f"expected --collection an image folder, got {collection} (no images)")
        model, why = load_for_viz(spec, vq_model, device)
        root = Path(cache_dir).expanduser()
        folder = root / f"examples-{model.image_size}"  # 16 concept scenes, rendered once
        picks = [folder / f"scene_{i:03d}.png" for i in range(16)]
        with output_folder(folder, "stellar explore", "--cache-dir", [collection]):
            for i, path in enumerate(picks):
                if not path.is_file():
                    image = to_pil(render_scene(0, i, model.image_size, split="val")["image"])
                    atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
        if collection is not None:
            folder = Path(collection)
            picks = found[:MAX_PICKS] + picks
        return cls(model, spec, Collection(model, folder, spec, root), picks, why)

    @torch.inference_mode()
    def reconstruct(self, sparse: Tensor, spatial: Tensor, grid: tuple[int, int], size: int):
        """The decoder's picture of Z = L·S (``sparse`` S (r, d), ``spatial`` L (n, r), patch
        ``grid`` (h, w)), ``size`` px square; None when it cannot draw."""
        if self.why_not is not None:
            return None
        device = self.model.device
        s, l_ = sparse[None].to(device), spatial[None].to(device)
        image = self.model.reconstruct(s, l_, grid=grid)["reconstruction"][0].float().cpu()
        return to_pil(image).resize((size, size), Image.Resampling.BICUBIC)

    def describe(self) -> str:
        """One line about the model for the page's header."""
        m = self.model
        h = m.image_size // m.patch_size
        rec = f"no reconstruction ({self.why_not})" if self.why_not else "reconstruction on"
        return (
            f"**{Path(self.spec).name}**: {m.num_tokens} concept tokens of width {m.embed_dim}, "
            f"{m.image_size} px, {h}x{h} patches; {rec}. Collection: `{self.collection.folder}`."
        )
