"""Concept retrieval for the explorer: the token index of ``stellar retrieve`` over the
collection, cached in ``--cache-dir`` one sub-folder per (collection, weights)."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from stellar.data.folder import EvalImages
from stellar.errors import UsageError
from stellar.explore.core import Encoded, encode_image
from stellar.images import open_image
from stellar.outputs import output_folder
from stellar.viz.token_index import (
    INDEX_FILE,
    TokenIndex,
    build_token_index,
    index_differences,
    query_index,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)

CACHE_DIR = Path("~/.cache/stellar/explore")


@dataclass
class Neighbour:
    """One retrieved concept token: ``token`` of the image ``encoded``, cosine ``similarity``."""

    encoded: Encoded
    token: int
    similarity: float


class Collection:
    """An image folder (searched recursively) whose concept tokens ``model`` can search; its
    index is kept under ``cache_dir``, recording ``spec``."""

    def __init__(self, model, folder: str | Path, spec: str, cache_dir: str | Path = CACHE_DIR):
        self.model, self.spec = model, spec
        self.folder = Path(folder).resolve()
        fingerprint = weights_fingerprint(model)
        key = hashlib.sha256(f"{self.folder}\n{fingerprint}".encode()).hexdigest()[:16]
        self.index_dir = Path(cache_dir).expanduser() / key
        self._index: TokenIndex | None = None
        # the neighbours' images, encoded to draw their maps; the last 64 are kept
        self.encoded = functools.lru_cache(64)(
            lambda path: encode_image(model, open_image(path), Path(path).name)
        )

    def index(self) -> TokenIndex:
        """The index: in memory, else the cached one when it matches, else built and saved
        (Gradio runs one retrieval at a time, so one build)."""
        if self._index is not None:
            return self._index
        dataset = EvalImages(str(self.folder), self.model.image_size, resize_ratio=1.0)
        if (self.index_dir / INDEX_FILE).is_file():
            try:
                index = TokenIndex.load(self.index_dir)
            except UsageError as err:  # a cache: rebuilt, not a reason to stop
                logger.warning("%s: rebuilding it", err)
            else:
                size, folder = self.model.image_size, str(self.folder)
                differ = index_differences(index, self.model, size, folder, dataset.files_id)
                if not differ:
                    logger.info("reusing the index of %d tokens in %s", len(index), self.index_dir)
                    self._index = index
                    return index
                logger.warning("rebuilding the index in %s: %s", self.index_dir, "; ".join(differ))
        index = build_token_index(
            self.model,
            dataset,
            batch_size=16,
            model_spec=self.spec,
            data=str(self.folder),
        )
        with output_folder(self.index_dir, "stellar explore", "--cache-dir"):
            index.save(self.index_dir)
        logger.info(
            "indexed %d tokens of %d images in %s", len(index), len(index.paths), self.index_dir
        )
        self._index = index
        return index

    def neighbours(self, vector: Tensor, k: int = 8) -> list[Neighbour]:
        """The ``k`` indexed concept tokens most similar to ``vector`` (d,), best first."""
        index = self.index()
        scores, rows = query_index(index, vector, k)
        found = []
        for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
            path = index.paths[int(index.image[row])]
            try:
                encoded = self.encoded(path)
            except ValueError:  # deleted or damaged since indexing: left out of the gallery
                logger.warning("cannot read %s any more; left out", path)
                continue
            found.append(Neighbour(encoded, int(index.token[row]), float(score)))
        return found
