"""The calls of the model card, from a name or path to a ready model.

``load_stellar`` is :func:`stellar.hub.load_stellar` (strict loading of a released name, a
weights file, a directory or a training run folder), except that ``purpose="pretrain"`` builds
a :class:`~stellar.train.pretraining.StellarForPretraining`, whose call takes the card's batch
dict.
"""

from __future__ import annotations

from pathlib import Path

import stellar.hub as hub
from stellar.models.stellar import STELLAR, Purpose
from stellar.train.pretraining import StellarForPretraining

__all__ = ["load_stellar"]


def load_stellar(
    name_or_path: str | Path, purpose: Purpose = "encode", **options
) -> STELLAR | StellarForPretraining:
    """Load a STELLAR checkpoint strictly, ready for ``purpose``.

    Args:
        name_or_path: a released name (``list_models()``), a weights file, a directory with
            ``model.safetensors`` (+ ``config.json``), or a training run folder (its latest
            checkpoint).
        purpose: ``"encode"`` (encoder side, eval mode, no gradients), ``"reconstruct"`` (adds
            the decoder, which the checkpoint must carry) or ``"pretrain"`` (every module,
            train mode, gradients on; returns a :class:`StellarForPretraining`, called with the
            card's batch dict).
        **options: ``vq_model`` (``"maskgit-vqgan"``, the tokenizer's file, or a loaded
            tokenizer; needed by vq-head models to reconstruct or pretrain), ``device``,
            ``dtype``; see :func:`stellar.hub.load_stellar`.
    """
    if purpose == "pretrain":
        return hub.load_stellar(name_or_path, purpose, model_class=StellarForPretraining, **options)
    return hub.load_stellar(name_or_path, purpose, **options)
