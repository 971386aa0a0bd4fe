"""``load_stellar`` / ``create_stellar``: names and paths to ready models, never the network.

A registered name resolves to local files only: ``cache_dir``, then ``$STELLAR_HOME``, then
``~/.cache/stellar``, each searched for ``<name>/`` (a directory with ``model.safetensors`` or
``<name>.safetensors``, and optionally ``config.json``) or a file ``<name>.safetensors``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from stellar.checkpoint.infer import infer_config
from stellar.checkpoint.io import (
    CONFIG_METADATA_KEY,
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_state_dict,
)
from stellar.checkpoint.official import HEAD_PREFIXES, from_official
from stellar.models.config import StellarConfig
from stellar.models.registry import get_config, is_released, list_models
from stellar.models.stellar import PURPOSES, STELLAR, Purpose
from stellar.models.vqgan import MaskGITVQGAN, load_vqgan

logger = logging.getLogger(__name__)

ENV_HOME = "STELLAR_HOME"
_OURS_DECODER = ("decoder.",)


def search_dirs(cache_dir: str | Path | None = None) -> list[Path]:
    """Where registered names are looked up, in order."""
    dirs = [Path(cache_dir)] if cache_dir else []
    if os.environ.get(ENV_HOME):
        dirs.append(Path(os.environ[ENV_HOME]))
    dirs.append(Path.home() / ".cache" / "stellar")
    return dirs


def resolve(
    name_or_path: str | Path, cache_dir: str | Path | None = None
) -> tuple[Path, Path | None]:
    """Find the weights file (and a ``config.json`` when there is one) for a name or path."""
    path = Path(name_or_path)
    if path.is_dir():
        return _weights_in_dir(path), (
            path / CONFIG_NAME if (path / CONFIG_NAME).is_file() else None
        )
    if path.is_file():
        return path, None
    name = str(name_or_path)
    if name not in list_models():
        raise FileNotFoundError(
            f"{name!r} is neither an existing file or directory nor a registered model name "
            f"(known: {', '.join(list_models())})"
        )
    if not is_released(name):
        raise FileNotFoundError(
            f"{name!r} is a preset with no released weights: build it with "
            f"create_stellar({name!r}) (random init) or pass the path of your own checkpoint"
        )
    tried = []
    for root in search_dirs(cache_dir):
        for candidate in (root / name, root / f"{name}.safetensors"):
            tried.append(str(candidate))
            if candidate.is_dir():
                try:
                    return resolve(candidate)
                except FileNotFoundError:
                    continue
            if candidate.is_file():
                return candidate, None
    raise FileNotFoundError(
        f"weights for {name!r} are not on this machine (looked in: {'; '.join(tried)}). Nothing is "
        f"downloaded at run time: download {name}.safetensors from the model card "
        f"(microsoft/STELLAR) and place it in one of those places, set ${ENV_HOME}, pass "
        "cache_dir=..., or pass the file path itself"
    )


def _weights_in_dir(directory: Path) -> Path:
    for name in (WEIGHTS_NAME, "weights.safetensors", f"{directory.name}.safetensors"):
        if (directory / name).is_file():
            return directory / name
    found = sorted(directory.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} (or other .safetensors file) in {directory}")
    raise FileNotFoundError(
        f"{directory} holds several .safetensors files ({', '.join(p.name for p in found)}) "
        f"and no {WEIGHTS_NAME}: pass the file you mean"
    )


def create_stellar(
    name_or_config: str | StellarConfig = "stellar-tiny",
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    **overrides,
) -> STELLAR:
    """A randomly initialised model of a registered size (``overrides`` change config fields)."""
    config = name_or_config
    if isinstance(config, str):
        config = get_config(config)
    if overrides:
        config = config.replace(**overrides)
    model = STELLAR(config, purpose=purpose)
    if vq_model is not None:  # a random vq-head model may stay without one until it decodes
        _attach_tokenizer(model, vq_model, purpose)
    return _finish(model, purpose)


def load_stellar(
    name_or_path: str | Path,
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
) -> STELLAR:
    """Load a STELLAR checkpoint strictly.

    Args:
        name_or_path: a registered name (``list_models()``), a directory with
            ``model.safetensors`` (+ ``config.json``), or a ``.safetensors`` / torch pickle file
            in the official key layout (transformers 4.x or 5.x names). Without a config the
            architecture is inferred from the tensor shapes (:mod:`stellar.checkpoint.infer`).
        purpose: ``"encode"`` (encoder side only, eval mode, no gradients), ``"reconstruct"``
            (adds the decoder, which the checkpoint must carry) or ``"pretrain"`` (all modules,
            train mode, gradients on; a decoder or heads the checkpoint lacks start fresh).
        vq_model: path of ``maskgit-vqgan-imagenet-f16-256.bin`` (or a loaded tokenizer), needed
            by vq-head models for ``reconstruct`` and ``pretrain``.
        device, dtype: where and in which dtype to put the model.
        cache_dir: extra directory searched first for registered names.

    Every tensor of the file is either loaded or on the explicit list of known-unused keys
    (pooler, decoder embeddings) or belongs to a part the purpose does not build; anything
    else, a missing tensor or a wrong shape raises ValueError naming the keys.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    weights, config_path = resolve(name_or_path, cache_dir)
    state, metadata = read_state_dict(weights)
    config = _config_for(state, metadata, config_path, weights)
    model = STELLAR(config, purpose=purpose)
    load_official_state(model, state, source=str(weights))
    _attach_tokenizer(model, vq_model, purpose)
    return _finish(model, purpose, device, dtype)


def _config_for(
    state: dict[str, Tensor], metadata: dict[str, str], config_path: Path | None, weights: Path
) -> StellarConfig:
    if config_path is not None:
        return StellarConfig.load(config_path)
    if CONFIG_METADATA_KEY in metadata:
        return StellarConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    config = infer_config(state)
    logger.info("no config for %s: inferred %s from the tensor shapes", weights, config)
    return config


def load_official_state(
    model: STELLAR, state: dict[str, Tensor], source: str = "checkpoint"
) -> None:
    """Load an official-layout state dict into ``model`` strictly (see :func:`load_stellar`)."""
    mapped, unused, unknown = from_official(state)
    if unknown:
        raise ValueError(f"{source}: unexpected keys that STELLAR does not know: {_names(unknown)}")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("tokenizer.")}
    not_built = [k for k in mapped if k not in expected and _optional_part(k)]
    unexpected = [k for k in mapped if k not in expected and not _optional_part(k)]
    if unexpected:
        raise ValueError(f"{source}: unexpected keys for this architecture: {_names(unexpected)}")
    wrong = [
        f"{k} (checkpoint {tuple(mapped[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{source}: shape mismatch: {_names(wrong)}")
    missing = [k for k in expected if k not in mapped]
    _check_missing(model, missing, source)
    if unused:
        logger.debug(
            "%s: %d known-unused tensors skipped (%s)", source, len(unused), _names(unused)
        )
    if not_built:
        logger.info(
            "%s: %d tensors of parts that purpose=%r does not build were left out (%s)",
            source,
            len(not_built),
            model.purpose,
            _names(not_built, 3),
        )
    model.load_state_dict({k: mapped[k] for k in expected if k in mapped}, strict=False)


def _check_missing(model: STELLAR, missing: list[str], source: str) -> None:
    core = [k for k in missing if not _optional_part(k)]
    if core:
        raise ValueError(f"{source}: missing tensors: {_names(core)}")
    decoder = [k for k in missing if k.startswith(_OURS_DECODER)]
    if decoder and model.purpose == "reconstruct":
        raise ValueError(
            f"{source} carries no reconstruction decoder (e.g. an encoder-only feature "
            "release), so purpose='reconstruct' cannot work: use a checkpoint with the decoder, "
            "or purpose='encode'"
        )
    if missing:
        logger.warning(
            "%s lacks %d tensors of the decoder / clustering heads; they start from random "
            "init for pretraining (%s)",
            source,
            len(missing),
            _names(missing, 3),
        )


def _optional_part(key: str) -> bool:
    return key.startswith(_OURS_DECODER + HEAD_PREFIXES)


def _names(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _attach_tokenizer(
    model: STELLAR, vq_model: str | Path | MaskGITVQGAN | None, purpose: str
) -> None:
    needs = purpose in ("reconstruct", "pretrain") and model.config.decoder_head == "vq"
    if vq_model is None:
        if needs and purpose == "reconstruct":
            raise ValueError(
                "this model's decoder predicts MaskGIT-VQGAN codes: pass "
                "vq_model='path/to/maskgit-vqgan-imagenet-f16-256.bin' (never downloaded)"
            )
        return
    if not needs:
        logger.warning(
            "vq_model ignored: purpose=%r with a %r head does not use it",
            purpose,
            model.config.decoder_head,
        )
        return
    tokenizer = vq_model if isinstance(vq_model, MaskGITVQGAN) else load_vqgan(vq_model)
    model.set_tokenizer(tokenizer)


def _finish(
    model: STELLAR,
    purpose: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> STELLAR:
    training = purpose == "pretrain"
    model.requires_grad_(training).train(training)
    if model.tokenizer is not None:
        model.tokenizer.requires_grad_(False).eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def load_model(
    spec: str | Path,
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
) -> STELLAR:
    """What commands call with ``--model``: a path, a released name, or a preset.

    A path is a checkpoint directory (a training run's ``checkpoints/last`` included) or file;
    a released name resolves locally as in :func:`load_stellar`; a preset name without
    weights builds a randomly initialised model and says so in the log.
    """
    spec = str(spec)
    if not Path(spec).exists() and spec in list_models() and not is_released(spec):
        logger.warning("%s has no weights: using a RANDOMLY INITIALISED model", spec)
        model = create_stellar(spec, purpose=purpose, vq_model=vq_model)
        model.requires_grad_(False).eval()
        return model.to(device) if device is not None else model
    run_checkpoint = Path(spec) / "checkpoints" / "last"
    if run_checkpoint.is_dir():
        spec = str(run_checkpoint)
    model = load_stellar(spec, purpose=purpose, vq_model=vq_model, device=device)
    model.requires_grad_(False).eval()
    return model
