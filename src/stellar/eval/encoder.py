"""The encoder contract of the evaluation protocols, and the one encoding pass around it.

Every protocol takes an :class:`Encoder`: STELLAR (:class:`stellar.models.stellar.STELLAR`) and
the plain ViT / MAE baselines (:class:`stellar.eval.baseline.ViTBaseline`) both satisfy it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from stellar.errors import UsageError
from stellar.eval.images import decodable_batches
from stellar.models.stellar import STELLAR
from stellar.runtime import autocast

__all__ = [
    "BASELINE_KEYS",
    "DEFAULT_KEYS",
    "FEATURE_KEYS",
    "STELLAR_KEYS",
    "Encoder",
    "check_keys",
    "encode_batch",
    "extract_features",
    "feature_keys",
    "weights_fingerprint",
]

# The per-image probe features each kind of model offers (``spatial`` and ``peak_dist`` are
# maps and statistics, not probe features).
STELLAR_KEYS: tuple[str, ...] = STELLAR.feature_keys
BASELINE_KEYS: tuple[str, ...] = ("cls", "dense")
# Every output an encoding pass may keep.
FEATURE_KEYS: tuple[str, ...] = ("cls", "dense", "sparse", "spatial", "lowrank", "peak_dist")
DEFAULT_KEYS: tuple[str, ...] = ("sparse", "cls", "spatial")  # what `stellar extract` keeps


@runtime_checkable
class Encoder(Protocol):
    """A frozen image encoder as the protocols use it.

    Attributes:
        patch_size: p; inputs are (B, 3, H, W) with H and W multiples of p.
        feature_keys: the outputs of :meth:`encode` a probe may read.
        config: ``config.encoder`` (an :class:`~stellar.models.config.EncoderConfig`: width,
            native ``image_size``), ``config.decoder`` and ``config.fourier_features`` (the
            size of a reconstruction-probe decoder).
    """

    patch_size: int
    feature_keys: tuple[str, ...]
    config: Any

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        ...

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> ``{key: (B, tokens, d)}`` (checked inputs)."""
        ...

    def forward_encode(self, images: Tensor) -> dict[str, Tensor]:
        """:meth:`encode` without input checks (crops resampled slightly outside [0, 1])."""
        ...


def feature_keys(model: Encoder) -> tuple[str, ...]:
    """The probe features ``model`` offers."""
    return tuple(model.feature_keys)


@torch.inference_mode()
def encode_batch(
    model: Encoder,
    images: Tensor,
    keys: Sequence[str],
    fp16: bool = False,
    precision: str = "auto",
) -> dict[str, Tensor]:
    """Encode one batch on the model's device under ``inference_mode`` and return CPU tensors.

    Args:
        model: the encoder.
        images: (B, 3, H, W) in [0, 1].
        keys: outputs of ``model.encode`` to keep.
        fp16: store floating outputs as float16 (otherwise float32).
        precision: ``auto`` (the enclosing :func:`~stellar.runtime.precision` block's
            setting, else bf16 autocast where the device computes it natively), ``bf16`` or
            ``fp32``.

    Returns:
        ``{key: (B, ...)}`` on the CPU.

    Raises:
        ValueError: a kept output holds NaN or infinite values (e.g. diverged weights).
    """
    device = model.device
    with autocast(device, precision):
        out = model.encode(images.to(device, non_blocking=True))
    dtype = torch.float16 if fp16 else torch.float32
    kept = {k: out[k].to("cpu", dtype) for k in keys}
    bad = [k for k, v in kept.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ValueError(
            f"the model produced non-finite {', '.join(bad)} features (NaN or inf); expected "
            "finite weights: is the checkpoint diverged?"
        )
    return kept


def weights_fingerprint(model: Any) -> str:
    """A short hash identifying a model's weights (what saved features were computed with).

    Hashes the concept tokens, the patch embedding and the sparse projection (the patch
    embedding alone for a model without concept tokens): cheap (no full pass over the
    weights), independent of the file's path or time stamps, and different for any two
    trained or differently seeded models.
    """
    digest = hashlib.sha256()
    tensors = [model.encoder.patch_embed.weight]
    if hasattr(model, "sparse_tokens"):
        tensors = [model.sparse_tokens, model.encoder.patch_embed.weight, model.sparse_proj.weight]
    for tensor in tensors:
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def check_keys(keys: Sequence[str]) -> list[str]:
    """``keys`` without blanks and repeats, each one of :data:`FEATURE_KEYS`."""
    keys = list(dict.fromkeys(k.strip() for k in keys if k.strip()))
    bad = [k for k in keys if k not in FEATURE_KEYS]
    if not keys or bad:
        raise UsageError(
            f"expected feature keys among {', '.join(FEATURE_KEYS)}, got {keys or 'none'}"
        )
    return keys


def extract_features(
    model: Encoder,
    dataset: Dataset,
    keys: Sequence[str] = DEFAULT_KEYS,
    batch_size: int = 64,
    num_workers: int = 0,
    fp16: bool = False,
    progress: bool = True,
    reduce: Callable[[Tensor], Tensor] | None = None,
    precision: str = "auto",
    keep_images: bool = False,
) -> dict[str, Tensor]:
    """Features of a whole dataset, in memory: the one encoding pass of the evaluations.

    Args:
        model: a STELLAR model (its device is used).
        dataset: yields :class:`~stellar.eval.images.EvalImages` items (``None`` = broken).
        keys: outputs of ``model.encode`` to keep.
        batch_size, num_workers: loader settings.
        fp16: keep floating features as float16.
        progress: show a progress bar (tqdm on a terminal, log lines in a pipe).
        reduce: applied to each batch of features before it is kept (e.g. token pooling, so
            the token axis never accumulates).
        keep_images: also keep the images as ``image``, (N, 3, H, W) uint8.
        precision: the encoding's autocast (see :func:`~stellar.eval.encoder.encode_batch`).

    Returns:
        ``{key: (N, ...)}`` for each key, plus ``label`` (N,) and ``index`` (N,) int64, the
        dataset index of each row; N counts the decodable images only.
    """
    keys = check_keys(keys)
    parts: dict[str, list[Tensor]] = {k: [] for k in (*keys, "label", "index")}
    pin = model.device.type == "cuda"
    desc = f"features[{','.join(keys)}]"
    for batch in decodable_batches(dataset, batch_size, num_workers, pin, desc, progress):
        for k, v in encode_batch(model, batch["image"], keys, fp16, precision).items():
            parts[k].append(v if reduce is None else reduce(v))
        parts["label"].append(batch["label"])
        parts["index"].append(batch["index"])
        if keep_images:
            parts.setdefault("image", []).append(batch["image"].mul(255).round_().to(torch.uint8))
    return {k: torch.cat(v) for k, v in parts.items()}
