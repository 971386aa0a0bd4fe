"""The encoder contract of the evaluation protocols, and what is shared around it.

Every protocol takes an :class:`Encoder`: STELLAR (:class:`stellar.models.stellar.STELLAR`) and
the plain ViT / MAE baselines (:class:`stellar.eval.baseline.ViTBaseline`) both satisfy it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from stellar.models.stellar import STELLAR
from stellar.runtime import autocast

__all__ = [
    "BASELINE_KEYS",
    "STELLAR_KEYS",
    "Encoder",
    "encode_batch",
    "feature_keys",
    "weights_fingerprint",
]

# The per-image probe features each kind of model offers (``spatial`` and ``peak_dist`` are
# maps and statistics, not probe features).
STELLAR_KEYS: tuple[str, ...] = STELLAR.feature_keys
BASELINE_KEYS: tuple[str, ...] = ("cls", "dense")


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
    model: Encoder, images: Tensor, keys: Sequence[str], fp16: bool = False
) -> dict[str, Tensor]:
    """Encode one batch on the model's device and return CPU tensors (bf16 autocast where the
    device computes it natively: :func:`~stellar.runtime.precision_choice`).

    Args:
        model: the encoder.
        images: (B, 3, H, W) in [0, 1].
        keys: outputs of ``model.encode`` to keep.
        fp16: store floating outputs as float16 (otherwise float32).

    Returns:
        ``{key: (B, ...)}`` on the CPU.

    Raises:
        ValueError: a kept output holds NaN or infinite values (e.g. diverged weights).
    """
    device = model.device
    with autocast(device):
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
