"""``load_stellar`` / ``create_stellar``: names and paths to ready models, never the network.

A registered name resolves to local files only: ``cache_dir``, then ``$STELLAR_HOME``, then
``~/.cache/stellar``, each searched for ``<name>/`` (a directory with ``model.safetensors`` or
``<name>.safetensors``, and optionally ``config.json``) or a file ``<name>.safetensors``. What
is found there must have the registered architecture (see :func:`check_matches_name`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from stellar.checkpoint.infer import infer_config
from stellar.checkpoint.io import (
    CONFIG_METADATA_KEY,
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_header,
    read_state_dict,
)
from stellar.checkpoint.official import from_official, is_known_unused, to_official
from stellar.models.config import StellarConfig
from stellar.models.registry import get_config, is_released, list_models
from stellar.models.stellar import PURPOSES, STELLAR, Purpose
from stellar.models.vqgan import MaskGITVQGAN, load_vqgan

logger = logging.getLogger(__name__)

ENV_HOME = "STELLAR_HOME"
# Modules that only some purposes build (see STELLAR.__init__); everything else always exists.
OPTIONAL_PARTS: tuple[str, ...] = ("decoder", "clustering_head", "cls_cluster_head")
# Official keys that load into the decoder (the decoder ViT's own embeddings are known-unused).
_DECODER_KEYS = ("decoder.", "decoder_proj.", "position_embedding.", "reconstruction_head.")
# Config fields that fix a released model's shape, compared when loading by registered name.
_SHAPE_FIELDS: tuple[tuple[str, str | None, str], ...] = (
    ("encoder", "hidden_size", "width"),
    ("encoder", "num_hidden_layers", "depth"),
    ("encoder", "num_attention_heads", "heads"),
    ("encoder", "patch_size", "patch size"),
    ("encoder", "image_size", "image size"),
    ("num_sparse_tokens", None, "concept tokens"),
)


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
    # a random vq-head model may stay without a tokenizer until it decodes
    tokenizer = _tokenizer_for(config, vq_model, purpose) if vq_model is not None else None
    model = STELLAR(config, purpose=purpose)
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
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
    (pooler, decoder embeddings) or belongs to a module the purpose does not build (the
    decoder for ``"encode"``, the clustering heads for ``"encode"`` / ``"reconstruct"``);
    anything else, a missing tensor or a wrong shape raises ValueError naming the keys. A
    registered name must resolve to weights of that name's architecture (width, depth, heads,
    patch and image size, concept tokens), and a ``vq_model`` must have the codebook size
    the vq head predicts; both are checked before the model is built.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    weights, config_path = resolve(name_or_path, cache_dir)
    name = _registered_name(name_or_path)
    config = tokenizer = None
    if config_path is not None:  # checks that need only the config come before the weights
        config = StellarConfig.load(config_path)
        tokenizer = _checked_tokenizer(config, name, weights, vq_model, purpose)
    state, metadata = read_state_dict(weights)
    if config is None:
        config = _config_for(state, metadata, weights)
        tokenizer = _checked_tokenizer(config, name, weights, vq_model, purpose)
    model = STELLAR(config, purpose=purpose)
    load_official_state(model, state, source=str(weights))
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    return _finish(model, purpose, device, dtype)


def _checked_tokenizer(
    config: StellarConfig,
    name: str | None,
    weights: Path,
    vq_model: str | Path | MaskGITVQGAN | None,
    purpose: str,
) -> MaskGITVQGAN | None:
    """Check ``config`` against the registered ``name``; the tokenizer to attach, checked."""
    if name is not None:
        check_matches_name(config, name, weights)
    return _tokenizer_for(config, vq_model, purpose)


def _registered_name(name_or_path: str | Path) -> str | None:
    """The registered name ``name_or_path`` was resolved as (None: it is a path)."""
    path = Path(name_or_path)
    if path.is_dir() or path.is_file():
        return None
    return str(name_or_path) if str(name_or_path) in list_models() else None


def check_matches_name(config: StellarConfig, name: str, source: str | Path) -> None:
    """Raise ValueError when ``config`` is not the architecture registered as ``name``.

    A file named after a released model but holding another size would otherwise load as
    that other size without a word.
    """
    expected = get_config(name)
    differ = []
    for part, field, label in _SHAPE_FIELDS:
        got = getattr(config, part) if field is None else getattr(getattr(config, part), field)
        want = getattr(expected, part) if field is None else getattr(getattr(expected, part), field)
        if got != want:
            key = part if field is None else f"{part}.{field}"
            differ.append(f"{key} ({label}) {got}, {name} has {want}")
    if differ:
        raise ValueError(
            f"{source} was found for the registered name {name!r} but holds another "
            f"architecture: {'; '.join(differ)}. Put the right weights there, or pass the file "
            "path itself to load what it holds"
        )


def _config_for(state: dict[str, Tensor], metadata: dict[str, str], weights: Path) -> StellarConfig:
    """The config stored in the file's metadata, else the one its tensor shapes describe."""
    if CONFIG_METADATA_KEY in metadata:
        try:
            return StellarConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{weights}: the config in its metadata is invalid: {err}") from None
    config = infer_config(state)
    logger.info("no config for %s: inferred %s from the tensor shapes", weights, config)
    return config


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


def inspect_model(spec: str | Path, cache_dir: str | Path | None = None) -> ModelInfo:
    """The config of ``spec`` and whether it carries a decoder, without loading tensors.

    Reads ``config.json`` or the safetensors header (a zip-format pickle is memory-mapped), so
    commands can check their arguments against the model before the expensive load.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_stellar` would for the same spec.
    """
    spec, random_init = _command_spec(spec)
    if random_init:
        return ModelInfo(spec, get_config(spec), has_decoder=True, random_init=True)
    weights, config_path = resolve(spec, cache_dir)
    shapes, metadata = read_header(weights)
    if config_path is not None:
        config = StellarConfig.load(config_path)
    else:
        meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        config = _config_for(meta, metadata, weights)
    name = _registered_name(spec)
    if name is not None:
        check_matches_name(config, name, weights)
    return ModelInfo(spec, config, carries_decoder(shapes), random_init=False)


def carries_decoder(keys: Iterable[str]) -> bool:
    """Whether official-layout ``keys`` include reconstruction-decoder tensors."""
    return any(k.startswith(_DECODER_KEYS) and not is_known_unused(k) for k in keys)


def load_official_state(
    model: STELLAR, state: dict[str, Tensor], source: str = "checkpoint"
) -> None:
    """Load an official-layout state dict into ``model`` strictly (see :func:`load_stellar`)."""
    mapped, unused, unknown = from_official(state)
    if unknown:
        raise ValueError(f"{source}: unexpected keys that STELLAR does not know: {_names(unknown)}")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("tokenizer.")}
    extra = [k for k in mapped if k not in expected]
    # Only a module this purpose does not build may be left out; an extra tensor inside a
    # built module (a decoder layer too many, a stray head tensor) would be silently dropped.
    not_built = [k for k in extra if _part(k) is not None and getattr(model, _part(k)) is None]
    unexpected = [k for k in extra if k not in not_built]
    if unexpected:  # named as in the file (official layout), where the user can find them
        names = sorted(to_official({k: mapped[k] for k in unexpected}))
        raise ValueError(
            f"{source}: unexpected keys for this architecture (purpose={model.purpose!r}): "
            f"{_names(names)}"
        )
    wrong = [
        f"{k} (checkpoint {tuple(mapped[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{source}: shape mismatch: {_names(wrong)}")
    missing = [k for k in expected if k not in mapped]
    _check_missing(model, missing, set(mapped), source)
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


def _check_missing(model: STELLAR, missing: list[str], present: set[str], source: str) -> None:
    core = [k for k in missing if _part(k) is None]
    if core:
        raise ValueError(f"{source}: missing tensors: {_names(core)}")
    # A part the file carries only in pieces is damaged, not absent: never half random.
    carried = {_part(k) for k in present}
    partial = [k for k in missing if _part(k) in carried]
    if partial:
        raise ValueError(f"{source}: missing tensors: {_names(partial)}")
    decoder = [k for k in missing if _part(k) == "decoder"]
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


def _part(key: str) -> str | None:
    """The optional module (our names) that ``key`` belongs to, or None."""
    head = key.split(".", 1)[0]
    return head if head in OPTIONAL_PARTS else None


def _names(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _tokenizer_for(
    config: StellarConfig, vq_model: str | Path | MaskGITVQGAN | None, purpose: str
) -> MaskGITVQGAN | None:
    """The tokenizer to attach (None: not needed or not given), checked against ``config``."""
    needs = purpose in ("reconstruct", "pretrain") and config.decoder_head == "vq"
    if vq_model is None:
        if needs and purpose == "reconstruct":
            raise ValueError(
                "this model's decoder predicts MaskGIT-VQGAN codes: pass "
                "vq_model='path/to/maskgit-vqgan-imagenet-f16-256.bin' (never downloaded)"
            )
        return None
    if not needs:
        logger.warning(
            "vq_model ignored: purpose=%r with a %r head does not use it",
            purpose,
            config.decoder_head,
        )
        return None
    tokenizer = vq_model if isinstance(vq_model, MaskGITVQGAN) else load_vqgan(vq_model)
    # The vq head's logits index this codebook: another size fails (or decodes garbage)
    # only mid-run, so refuse it here.
    if tokenizer.codebook_size != config.vq_codebook_size:
        where = "" if isinstance(vq_model, MaskGITVQGAN) else f" {vq_model}"
        raise ValueError(
            f"the MaskGIT-VQGAN tokenizer{where} has a codebook of {tokenizer.codebook_size} "
            f"codes, but this model's vq head predicts {config.vq_codebook_size} "
            "(vq_codebook_size): pass the tokenizer the model was trained with"
        )
    return tokenizer


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
    spec, random_init = _command_spec(spec)
    if random_init:
        logger.warning("%s has no weights: using a RANDOMLY INITIALISED model", spec)
        model = create_stellar(spec, purpose=purpose, vq_model=vq_model)
        model.requires_grad_(False).eval()
        return model.to(device) if device is not None else model
    model = load_stellar(spec, purpose=purpose, vq_model=vq_model, device=device)
    model.requires_grad_(False).eval()
    return model
