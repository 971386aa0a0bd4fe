"""The token index of a collection's concept tokens, saved as ``tokens.safetensors`` and searched
by cosine similarity; used by ``stellar retrieve`` and the explorer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from stellar.errors import UsageError
from stellar.eval.encoder import Encoder, extract_features, weights_fingerprint
from stellar.eval.shards import differences
from stellar.outputs import atomic_write

INDEX_FILE = "tokens.safetensors"


@dataclass
class TokenIndex:
    """Unit-norm concept tokens of a collection.

    Attributes:
        vectors: (M, d) float32, L2-normalised, M = N·r rows (image-major).
        image: (M,) int64, row -> position in ``paths``.
        token: (M,) int64, row -> concept-token index in [0, r).
        paths: the N indexed image files.
        meta: how it was built (:func:`index_meta`) and the ``model`` spec.
    """

    vectors: Tensor
    image: Tensor
    token: Tensor
    paths: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    _faiss: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/tokens.safetensors`` atomically."""
        path = Path(directory) / INDEX_FILE
        tensors = {
            "vectors": self.vectors.contiguous(),
            "image": self.image.contiguous(),
            "token": self.token.contiguous(),
        }
        metadata = {"paths": json.dumps(self.paths), "meta": json.dumps(self.meta)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TokenIndex:
        """Read the index :meth:`save` wrote in ``directory``; a UsageError naming the file if
        it is missing or damaged."""
        path = Path(directory) / INDEX_FILE
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("vectors", "image", "token")}
            index = cls(
                tensors["vectors"].float(),
                tensors["image"].long(),
                tensors["token"].long(),
                json.loads(meta["paths"]),
                json.loads(meta["meta"]),
            )
            whole = len(index.image) == len(index.token) == len(index) and (
                not len(index)
                or 0 <= int(index.image.min()) <= int(index.image.max()) < len(index.paths)
            )
        except Exception:  # noqa: BLE001 - missing, truncated, not safetensors or bad metadata
            whole = False
        if not whole:
            raise UsageError(f"the token index {path} is damaged; delete it to build it again")
        return index


def index_meta(
    model: Encoder, resolution: int, data: str | None, files: str | None
) -> dict[str, Any]:
    """How an index of the collection ``data`` (its file list's hash: ``files``) by ``model``
    at ``resolution`` was built: what a saved index must match to be reused (with the
    ``model`` spec, recorded for messages)."""
    return {
        "weights": weights_fingerprint(model),
        "resolution": resolution,
        "num_tokens": model.num_tokens,
        "dim": model.embed_dim,
        "patch_size": int(model.patch_size),
        "data": data,
        "files": files,
    }


def index_differences(
    index: TokenIndex, model: Encoder, resolution: int, data: str | None, files: str | None
) -> list[str]:
    """Why ``index`` cannot be reused for ``model`` at ``resolution`` on ``data``: the
    :func:`~stellar.eval.shards.differences` of its settings from :func:`index_meta`'s (the file
    list only where the collection was scanned: ``files`` not None)."""
    wanted = index_meta(model, resolution, data, files)
    if files is None or index.meta.get("data") != data:  # another folder's files differ anyway
        del wanted["files"]
    return differences(index.meta, wanted)


def build_token_index(
    model: Encoder,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    model_spec: str = "",
    data: str | None = None,
) -> TokenIndex:
    """The N·r concept tokens of the N decodable images of ``dataset``; ``model_spec`` and
    ``data`` (the collection's identity, e.g. its resolved folder) are recorded."""
    out = extract_features(model, dataset, ["sparse"], batch_size, num_workers=num_workers)
    tokens = F.normalize(out["sparse"], dim=-1)  # (N, r, d)
    n, r, d = tokens.shape
    resolution = int(getattr(dataset, "resolution", 0))
    files = getattr(dataset, "files_id", None)
    meta = {"model": model_spec, **index_meta(model, resolution, data, files)}
    return TokenIndex(
        tokens.reshape(n * r, d),
        torch.arange(n).repeat_interleave(r),
        torch.arange(r).repeat(n),
        out["paths"],
        meta,
    )


def query_index(index: TokenIndex, vector: Tensor, k: int = 8) -> tuple[Tensor, Tensor]:
    """The ``k`` (at most M) indexed tokens most similar to ``vector`` (d,), by cosine
    similarity (exact search: faiss ``IndexFlatIP`` when installed, else a matmul): ``scores``
    and ``rows`` (int64), each (k,), best first."""
    queries = F.normalize(vector.detach().float().cpu()[None], dim=-1)
    k = min(int(k), len(index))
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        scores, rows = (queries @ index.vectors.float().T).topk(k, dim=1)
    else:
        if index._faiss is None:
            index._faiss = faiss.IndexFlatIP(index.vectors.shape[1])
            index._faiss.add(index.vectors.float().contiguous().numpy())
        found = index._faiss.search(queries.contiguous().numpy(), k)
        scores, rows = torch.from_numpy(found[0]), torch.from_numpy(found[1]).long()
    return scores[0], rows[0]
