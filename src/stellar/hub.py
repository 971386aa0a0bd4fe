"""From a name or a path to a ready STELLAR: ``load_stellar``, ``create_stellar``, ``load_model``.

A name or path means one weights file (:func:`resolve`, the rule every ``--model`` option
follows). Its architecture has one source, the first that exists: the ``config.json`` beside
the weights (ours, or the model table's entry for the file), the config stored in the file's
metadata, the registry (a released name whose table is not at hand), and last the tensor
shapes (:func:`stellar.models.infer.infer_config`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch

from stellar.checkpoint.io import CONFIG_METADATA_KEY, CONFIG_NAME, RUN_CONFIG, WEIGHTS_NAME
from stellar.checkpoint.official import (
    absent_parts,
    carries,
    from_official,
    load_official,
)
from stellar.checkpoint.weights import (
    WeightsNotFoundError,
    hub_file,
    is_repo_id,
    read_header,
    read_json,
    read_state_dict,
)
from stellar.errors import UsageError
from stellar.losses.pretraining import StellarForPretraining
from stellar.models.config import EncoderConfig, StellarConfig
from stellar.models.infer import defaulted_fields, encoder_from_hf, infer_config
from stellar.models.registry import BACKBONES, get_config, is_released, list_models
from stellar.models.stellar import PURPOSES, STELLAR, Purpose
from stellar.models.vqgan import MaskGITVQGAN, check_tokenizer, load_vqgan
from stellar.runtime import pick_device
from stellar.schema import parse_yaml

logger = logging.getLogger(__name__)

STELLAR_REPO = "microsoft/STELLAR"
# Weights a directory may hold: ours, then the reference fixture's name.
WEIGHT_FILES = (WEIGHTS_NAME, "weights.safetensors")
# What a model table entry sets (the official card builds STELLARModel from exactly these).
TABLE_FIELDS = ("num_sparse_tokens", "num_decoder_layers", "spatial_temp")
# The fields that fix a registered name's shape, compared when loading by name.
NAME_FIELDS = (
    "encoder.hidden_size",
    "encoder.num_hidden_layers",
    "encoder.num_attention_heads",
    "encoder.patch_size",
    "encoder.image_size",
    "num_sparse_tokens",
)


def _model_class(purpose: Purpose) -> type[STELLAR]:
    """``purpose="pretrain"`` builds the model whose call takes the model card's batch dict."""
    return StellarForPretraining if purpose == "pretrain" else STELLAR


def create_stellar(
    name: str | StellarConfig = "stellar-tiny",
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> STELLAR:
    """A randomly initialised model of a registered name or a config (``overrides`` change
    fields); ``purpose`` and ``device`` as in :func:`load_stellar` (encode: eval, frozen)."""
    config = (name if isinstance(name, StellarConfig) else get_config(name)).replace(**overrides)
    # a random vq-head model may stay without a tokenizer until it decodes
    tokenizer = None if vq_model is None else _tokenizer(config, vq_model, purpose)
    return _finish(_model_class(purpose)(config, purpose), purpose, tokenizer, device)


def load_stellar(
    name_or_path: str | Path,
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
) -> STELLAR:
    """Load a STELLAR checkpoint strictly.

    Args:
        name_or_path: a released name (``list_models(released_only=True)``), the id of a
            Hugging Face repository that holds a ``save_pretrained`` folder, a weights file
            (``.safetensors`` or torch pickle, official key layout of transformers 4.x or
            5.x), a directory holding one, or a training run folder (its latest checkpoint).
        purpose: ``"encode"`` (encoder side, eval mode, no gradients), ``"reconstruct"`` (adds
            the decoder, which the checkpoint must carry) or ``"pretrain"`` (every module,
            train mode, gradients on; a decoder or heads the checkpoint lacks start fresh).
        vq_model: ``"maskgit-vqgan"`` (TiTok's release, fetched like a name), the path of
            ``maskgit-vqgan-imagenet-f16-256.bin``, or a loaded tokenizer; vq-head models need
            it to reconstruct and to pretrain (default for a training run's folder and its
            checkpoint folders: the one it trained with).
        device: where to put the model.

    Every tensor of the file is used, on the known-unused list, or belongs to a part the
    purpose does not build; a missing, unexpected or wrong-shape tensor, a non-finite one, a
    name whose file holds another architecture, or a tokenizer that does not fit the vq head
    raises ValueError naming it, before the model is built where the header suffices.

    Raises:
        FileNotFoundError: no such path, or a name neither cached nor downloadable.
        ValueError: the checks above.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    weights, keys, config = read_checkpoint(name_or_path)
    if purpose == "reconstruct" and not carries(keys, "decoder"):
        raise UsageError(  # before asking for a tokenizer it could not use
            f"{weights} carries no reconstruction decoder (e.g. an encoder-only feature "
            "release), so purpose='reconstruct' cannot work: use a checkpoint with the decoder, "
            "or purpose='encode'"
        )
    if vq_model is None and purpose != "encode" and config.decoder_head == "vq":
        vq_model = recorded_tokenizer(name_or_path)
    tokenizer = _tokenizer(config, vq_model, purpose)
    model_class = _model_class(purpose)
    with torch.device("meta"):  # no random init of tensors the file then overwrites
        model = model_class(config, purpose)
    if absent_parts(model, keys):  # parts the file lacks start from their init: build them
        model = model_class(config, purpose)
    load_official(model, read_state_dict(weights)[0], source=str(weights))
    return _finish(model, purpose, tokenizer, device)


def resolve(name_or_path: str | Path) -> tuple[Path, str | None]:
    """The weights file ``name_or_path`` means, and the released name it was given as.

    A training run folder means its ``checkpoints/last``; a directory its
    ``model.safetensors`` (or its only ``.safetensors``); a released name its file in
    ``microsoft/STELLAR``, and a Hugging Face repository id (``org/name``) its
    ``model.safetensors`` (from the Hugging Face cache, else downloaded).

    Raises:
        FileNotFoundError: none of these, naming what to do instead.
    """
    path = Path(name_or_path).expanduser()
    if (path / "checkpoints" / "last").is_dir():
        path = path / "checkpoints" / "last"
    if path.is_dir():
        found = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        found = found or sorted(path.glob("*.safetensors"))
        if len(found) == 1 or (found and found[0].name in WEIGHT_FILES):
            return found[0], None
        raise WeightsNotFoundError(
            f"{path} holds no {WEIGHTS_NAME} but {len(found)} other .safetensors: pass the weights"
            if found
            else f"{path} holds no weights: expected a folder with {WEIGHTS_NAME}, or a "
            "training run folder with checkpoints/last"
        )
    if path.is_file():
        return path, None
    name = str(name_or_path)
    if is_repo_id(name) and name != STELLAR_REPO:  # a save_pretrained folder, uploaded
        try:
            return hub_file(name, WEIGHTS_NAME, fetch=[CONFIG_NAME]), None
        except WeightsNotFoundError as err:
            where = f"{name!r} is not a local file or folder; as a repository id"
            raise WeightsNotFoundError(f"{where}: {err}") from None
    if not is_released(name):
        raise WeightsNotFoundError(
            f"{name!r} has no released weights: build a registered preset with "
            f"create_stellar({name!r}) (random init), or pass an existing file or directory "
            f"(released names: {', '.join(list_models(released_only=True))})"
            if name in list_models()
            else f"{name!r} is neither an existing file or directory nor a registered model "
            f"name (known: {', '.join(list_models())})"
        )
    return hub_file(STELLAR_REPO, f"{name}.safetensors", fetch=[CONFIG_NAME]), name


def read_checkpoint(name_or_path: str | Path) -> tuple[Path, list[str], StellarConfig]:
    """The weights file, its (official) keys and its config, read without loading tensors."""
    weights, name = resolve(name_or_path)
    shapes, metadata = read_header(weights)
    if any(key.startswith("encoder.blocks.") for key in shapes):
        raise UsageError(
            f"{weights} holds a model.state_dict() (this package's parameter names): load it "
            "with model.load_state_dict(...), or write checkpoints with model.save_pretrained"
        )
    table = weights.parent / CONFIG_NAME
    if name is not None and not table.is_file():
        try:
            table = hub_file(STELLAR_REPO, CONFIG_NAME)
        except FileNotFoundError as err:
            logger.warning("%s; using the registered architecture of %s", err, name)
    config = _config(weights, table if table.is_file() else None, shapes, metadata, name)
    if name is not None:
        _check_matches_name(config, name, weights)
    return weights, list(shapes), config


def _config(
    weights: Path,
    config_path: Path | None,
    shapes: dict[str, tuple[int, ...]],
    metadata: dict[str, str],
    name: str | None,
) -> StellarConfig:
    if config_path is not None:
        data = read_json(config_path)
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            return _table_config(data["models"], config_path, weights, shapes)
        try:
            return StellarConfig.from_dict(data)
        except ValueError as err:
            raise UsageError(f"{config_path}: {err}") from None
    if CONFIG_METADATA_KEY in metadata:
        try:
            return StellarConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        except ValueError as err:  # JSONDecodeError included
            raise UsageError(f"{weights}: the config in its metadata is invalid: {err}") from None
    if name is not None:
        return get_config(name)
    config = _inferred(shapes)
    logger.warning(
        "no configuration for %s: read the architecture from the tensor shapes; not fixed by "
        "any tensor, so defaulted: %s. Put a config.json beside the weights to be sure",
        weights,
        ", ".join(defaulted_fields(config)),
    )
    return config


def _inferred(shapes: dict[str, tuple[int, ...]], heads: int | None = None) -> StellarConfig:
    """:func:`infer_config` of an official-layout file's shapes."""
    ours = from_official({k: torch.empty(s, device="meta") for k, s in shapes.items()})[0]
    return infer_config({k: tuple(v.shape) for k, v in ours.items()}, heads)


def _table_config(
    table: dict[str, Any], source: Path, weights: Path, shapes: dict[str, tuple[int, ...]]
) -> StellarConfig:
    """The hub model table's entry for ``weights``: its fields and ``backbone`` encoder over
    the registered size of the entry's name, or for a name of the user's own (a fine-tune
    published in the official layout) over the tensor shapes."""
    found = [
        n for n, e in table.items() if isinstance(e, dict) and e.get("weights") == weights.name
    ]
    if not found:
        raise UsageError(
            f"{source} is a model table, but no entry has weights {weights.name!r} (entries: "
            f"{', '.join(table) or 'none'}): load a file the table describes"
        )
    name, entry = found[0], table[found[0]]
    where = f"{source} (entry {name!r})"
    encoder = _backbone(entry.get("backbone"), source.parent, where)
    changes = {k: entry[k] for k in TABLE_FIELDS if k in entry}
    try:
        base = (
            get_config(name)
            if name in list_models()
            else _inferred(shapes, encoder.num_attention_heads)
        )
        return base.replace(encoder=dataclasses.asdict(encoder), **changes)
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None


def _backbone(backbone: Any, table_dir: Path, where: str) -> EncoderConfig:
    """The encoder a table entry's ``backbone`` names: a known MAE id, a directory with an HF
    ViT ``config.json`` (relative to the table, else to the working directory), or another id."""
    if not isinstance(backbone, str) or not backbone:
        raise UsageError(f"{where}: expected 'backbone', an HF model id or a directory")
    if backbone in BACKBONES:
        return BACKBONES[backbone]
    for folder in (table_dir / backbone, Path(backbone).expanduser()):
        if (folder / CONFIG_NAME).is_file():
            return encoder_from_hf(folder / CONFIG_NAME)
    return encoder_from_hf(hub_file(backbone, CONFIG_NAME))


def _check_matches_name(config: StellarConfig, name: str, source: Path) -> None:
    """Refuse a file found for a released name that holds another architecture."""
    want = get_config(name)
    differ = [
        f"{key} {attrgetter(key)(config)}, {name} has {attrgetter(key)(want)}"
        for key in NAME_FIELDS
        if attrgetter(key)(config) != attrgetter(key)(want)
    ]
    if differ:
        raise UsageError(
            f"{source} was found for the registered name {name!r} but holds another "
            f"architecture: {'; '.join(differ)}. Pass the file path itself to load what it holds"
        )


def recorded_tokenizer(name_or_path: str | Path) -> str | None:
    """The ``vq_model`` a training run (its folder or a checkpoint folder in it) trained with,
    from the run's ``config.yaml``, or None."""
    path = Path(name_or_path).expanduser()
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    run_config = run / RUN_CONFIG
    data = parse_yaml(run_config.read_text(), str(run_config)) if run_config.is_file() else None
    return data.get("vq_model") if isinstance(data, dict) else None


def _tokenizer(
    config: StellarConfig, vq_model: str | Path | MaskGITVQGAN | None, purpose: str
) -> MaskGITVQGAN | None:
    """The tokenizer to attach (None: not needed or not given), checked against ``config``."""
    needs = purpose in ("reconstruct", "pretrain") and config.decoder_head == "vq"
    if vq_model is None:
        if needs and purpose == "reconstruct":
            raise UsageError(
                "this model's decoder predicts MaskGIT-VQGAN codes: pass vq_model='maskgit-vqgan' "
                "(TiTok's released tokenizer, fetched by name) or the path of "
                "maskgit-vqgan-imagenet-f16-256.bin"
            )
        return None
    if not needs:
        logger.warning("vq_model ignored: purpose=%r with a %r head", purpose, config.decoder_head)
        return None
    loaded = isinstance(vq_model, MaskGITVQGAN)
    tokenizer = vq_model if loaded else load_vqgan(vq_model)
    check_tokenizer(config, tokenizer, "" if loaded else str(vq_model))
    return tokenizer


def _finish(
    model: STELLAR,
    purpose: str,
    tokenizer: MaskGITVQGAN | None,
    device: str | torch.device | None,
) -> STELLAR:
    """Train mode and gradients for pretraining only; attach ``tokenizer`` (frozen); move."""
    training = purpose == "pretrain"
    model.requires_grad_(training).train(training)
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    if device is None:
        return model
    pick_device(device)  # one error for a device torch lacks; "cuda" stays the current GPU
    return model.to(device)


@dataclass
class ModelInfo:
    """What a ``--model`` spec describes, read without loading its weights (a preset: its
    registered config, with a decoder)."""

    config: StellarConfig
    has_decoder: bool


def _preset(spec: str | Path) -> bool:
    """A registered name without weights that is not also a path: built at random."""
    return not Path(spec).exists() and str(spec) in list_models() and not is_released(str(spec))


def inspect_model(spec: str | Path) -> ModelInfo:
    """The config of a ``--model`` spec and whether it carries a decoder (header only)."""
    if _preset(spec):
        return ModelInfo(get_config(str(spec)), has_decoder=True)
    _, keys, config = read_checkpoint(spec)
    return ModelInfo(config, carries(keys, "decoder"))


def load_model(
    spec: str | Path,
    purpose: Purpose = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
) -> STELLAR:
    """What commands call with ``--model``: :func:`load_stellar`, or a registered preset
    randomly initialised (said in the log)."""
    if _preset(spec):
        logger.warning("%s has no weights: using a RANDOMLY INITIALISED model", spec)
        return create_stellar(str(spec), purpose, vq_model, device)
    return load_stellar(spec, purpose, vq_model, device)
