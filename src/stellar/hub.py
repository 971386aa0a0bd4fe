"""``load_stellar`` / ``create_stellar`` / ``load_model``: names and paths to ready models.

The loading itself is :meth:`STELLAR.from_pretrained` (:mod:`stellar.models.pretrained`); this
module is the front end the package exports and the commands use.

A registered name is searched in ``cache_dir``, ``$STELLAR_HOME``, ``~/.cache/stellar``
(``<name>/`` or ``<name>.safetensors``), then the Hugging Face cache, then fetched when allowed
(:mod:`stellar.checkpoint.cache`). What is found must have the registered architecture (see
:func:`~stellar.models.pretrained.check_matches_name`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from stellar.models.config import StellarConfig
from stellar.models.pretrained import carries_decoder, finish, read_architecture, tokenizer_for
from stellar.models.registry import get_config, is_released, list_models
from stellar.models.stellar import STELLAR, Purpose
from stellar.models.vqgan import MaskGITVQGAN

__all__ = ["ModelInfo", "create_stellar", "inspect_model", "load_model", "load_stellar"]

logger = logging.getLogger(__name__)


def create_stellar(
    name_or_config: str | StellarConfig = "stellar-tiny",
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    download: bool = True,
    **overrides,
) -> STELLAR:
    """A randomly initialised model of a registered size (``overrides`` change config fields)."""
    config = name_or_config
    if isinstance(config, str):
        config = get_config(config)
    if overrides:
        config = config.replace(**overrides)
    # a random vq-head model may stay without a tokenizer until it decodes
    tokenizer = None if vq_model is None else tokenizer_for(config, vq_model, purpose, download)
    return finish(STELLAR(config, purpose=purpose), purpose, tokenizer)


def load_stellar(name_or_path: str | Path, purpose: Purpose = "encode", **options) -> STELLAR:
    """Load a STELLAR checkpoint strictly.

    Args:
        name_or_path: a registered name (``list_models()``), a directory with
            ``model.safetensors`` (+ ``config.json``), or a ``.safetensors`` / torch pickle file
            in the official key layout (transformers 4.x or 5.x names). A ``config.json``
            model table beside the file (the hub repository's layout) gives its entry for
            the file; without any config the architecture is inferred from the tensor shapes
            (:mod:`stellar.models.infer`) and the assumed values are logged.
        purpose: ``"encode"`` (encoder side only, eval mode, no gradients), ``"reconstruct"``
            (adds the decoder, which the checkpoint must carry) or ``"pretrain"`` (all modules,
            train mode, gradients on; a decoder or heads the checkpoint lacks start fresh).
        **options: the keyword arguments below (typed in
            :func:`~stellar.models.pretrained.load_pretrained`, which does the loading for
            :meth:`STELLAR.from_pretrained <stellar.models.stellar.STELLAR.from_pretrained>`).
        vq_model: ``"maskgit-vqgan"`` (TiTok's released tokenizer, found like a name), the
            path of ``maskgit-vqgan-imagenet-f16-256.bin``, or a loaded tokenizer; needed by
            vq-head models for ``reconstruct`` and ``pretrain``.
        device, dtype: where and in which dtype to put the model.
        cache_dir: extra directory searched first for registered names.
        download: False never fetches a missing file (as ``HF_HUB_OFFLINE=1`` or
            ``STELLAR_OFFLINE=1`` do).

    A registered name is looked up in ``cache_dir``, ``$STELLAR_HOME``, ``~/.cache/stellar``,
    then the Hugging Face cache of ``microsoft/STELLAR``, and downloaded with
    ``huggingface_hub`` when it is installed and downloading is allowed
    (:mod:`stellar.checkpoint.cache`); an error lists every place searched.

    Every tensor of the file is either loaded or on the explicit list of known-unused keys
    (pooler, decoder embeddings) or belongs to a module the purpose does not build (the
    decoder for ``"encode"``, the clustering heads for ``"encode"`` / ``"reconstruct"``);
    anything else, a missing tensor or a wrong shape raises ValueError naming the keys. A
    registered name must resolve to weights of that name's architecture (width, depth, heads,
    patch and image size, concept tokens), and a ``vq_model`` must have the codebook size
    the vq head predicts and a downsampling that fits the patch size
    (:func:`~stellar.models.pretrained.check_tokenizer`); all are checked before the model is
    built.
    """
    return STELLAR.from_pretrained(name_or_path, purpose, **options)


@dataclass
class ModelInfo:
    """What a ``--model`` spec describes, read without loading its weights.

    Attributes:
        spec: the spec (a training run folder replaced by its ``checkpoints/last``).
        config: the architecture.
        has_decoder: whether the weights carry a reconstruction decoder (a random preset
            builds one).
        random_init: a preset without weights (``create_stellar``).
    """

    spec: str
    config: StellarConfig
    has_decoder: bool
    random_init: bool


def _command_spec(spec: str | Path) -> tuple[str, bool]:
    """``(spec, random_init)`` of a ``--model`` value: run folders point at their last save."""
    spec = str(spec)
    if not Path(spec).exists() and spec in list_models() and not is_released(spec):
        return spec, True
    run_checkpoint = Path(spec) / "checkpoints" / "last"
    if run_checkpoint.is_dir():
        spec = str(run_checkpoint)
    return spec, False


def inspect_model(
    spec: str | Path, cache_dir: str | Path | None = None, download: bool = True
) -> ModelInfo:
    """The config of ``spec`` and whether it carries a decoder, without loading tensors.

    Reads ``config.json`` or the safetensors header (a zip-format pickle is memory-mapped), so
    commands can check their arguments against the model before the expensive load.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_stellar` would for the same spec.
    """
    spec, random_init = _command_spec(spec)
    if random_init:
        return ModelInfo(spec, get_config(spec), has_decoder=True, random_init=True)
    _, shapes, config = read_architecture(spec, cache_dir, download)
    return ModelInfo(spec, config, carries_decoder(shapes), random_init=False)


def load_model(
    spec: str | Path,
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
    download: bool = True,
) -> STELLAR:
    """What commands call with ``--model``: a path, a released name, or a preset.

    A path is a checkpoint directory (a training run's ``checkpoints/last`` included) or file;
    a released name resolves locally as in :func:`load_stellar`; a preset name without
    weights builds a randomly initialised model and says so in the log.
    """
    spec, random_init = _command_spec(spec)
    if random_init:
        logger.warning("%s has no weights: using a RANDOMLY INITIALISED model", spec)
        model = create_stellar(spec, purpose=purpose, vq_model=vq_model, download=download)
        model.requires_grad_(False).eval()
        return model.to(device) if device is not None else model
    model = load_stellar(spec, purpose=purpose, vq_model=vq_model, device=device, download=download)
    model.requires_grad_(False).eval()
    return model
