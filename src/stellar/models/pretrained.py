"""From a name or path to a loaded STELLAR: find the files, the config, load strictly.

:meth:`STELLAR.from_pretrained <stellar.models.stellar.STELLAR.from_pretrained>` is built on
this module (the model class imports its loading helpers, never the reverse), and so are
:func:`stellar.load_stellar` and the commands' ``--model``. The model class is passed in
(``cls``), so nothing here imports :mod:`stellar.models.stellar` at run time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stellar.checkpoint.cache import STELLAR_REPO, find_released, local_dirs
from stellar.checkpoint.io import CONFIG_METADATA_KEY, CONFIG_NAME, WEIGHTS_NAME
from stellar.checkpoint.official import from_official, is_known_unused, to_official
from stellar.checkpoint.weights import (
    WeightsNotFoundError,
    check_finite,
    check_state,
    listing,
    read_header,
    read_state_dict,
)
from stellar.errors import UsageError
from stellar.models.config import StellarConfig
from stellar.models.infer import defaulted_fields, infer_config
from stellar.models.layout import is_model_table, read_json, table_config
from stellar.models.registry import get_config, is_released, list_models
from stellar.models.vqgan import MaskGITVQGAN, load_vqgan

if TYPE_CHECKING:
    from stellar.models.stellar import STELLAR

logger = logging.getLogger(__name__)

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


def resolve(
    name_or_path: str | Path, cache_dir: str | Path | None = None, download: bool = True
) -> tuple[Path, Path | None]:
    """The weights file and the ``config.json`` that describes it (None: there is none).

    A directory gives its weights and its ``config.json``; a file gives itself and the
    ``config.json`` beside it when that is a model table (the hub layout). A registered name
    is searched in ``cache_dir``, ``$STELLAR_HOME``, ``~/.cache/stellar`` (``<name>/`` or
    ``<name>.safetensors``), then in the Hugging Face cache of ``microsoft/STELLAR``, then
    downloaded when allowed
    (:mod:`stellar.checkpoint.cache`).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config = path / CONFIG_NAME
        return _weights_in_dir(path), config if config.is_file() else None
    if path.is_file():
        return path, _config_beside(path)
    name = str(name_or_path)
    if name not in list_models():
        raise WeightsNotFoundError(
            f"{name!r} is neither an existing file or directory nor a registered model name "
            f"(known: {', '.join(list_models())})"
        )
    if not is_released(name):
        raise WeightsNotFoundError(
            f"{name!r} is a preset with no released weights: build it with "
            f"create_stellar({name!r}) (random init) or pass the path of your own checkpoint"
        )
    candidates = []
    for root in local_dirs(cache_dir):
        folder = root / name
        if folder.is_dir():
            try:
                return resolve(folder)
            except FileNotFoundError:
                pass
        candidates += [folder, root / f"{name}.safetensors"]
    weights = find_released(
        STELLAR_REPO,
        f"{name}.safetensors",
        f"the weights of {name!r}",
        candidates,
        companions=(CONFIG_NAME,),
        allow_download=download,
    )
    return weights, _config_beside(weights)


def _config_beside(weights: Path) -> Path | None:
    """The ``config.json`` beside a weights file, when it describes that file."""
    config = weights.parent / CONFIG_NAME
    if not config.is_file():
        return None
    try:  # our own config.json describes a directory; a file given alone describes itself
        return config if is_model_table(read_json(config)) else None
    except ValueError:
        return None


def _weights_in_dir(directory: Path) -> Path:
    for name in (WEIGHTS_NAME, "weights.safetensors", f"{directory.name}.safetensors"):
        if (directory / name).is_file():
            return directory / name
    found = sorted(directory.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise WeightsNotFoundError(f"no {WEIGHTS_NAME} (or other .safetensors file) in {directory}")
    raise WeightsNotFoundError(
        f"{directory} holds several .safetensors files ({', '.join(p.name for p in found)}) "
        f"and no {WEIGHTS_NAME}: pass the file you mean"
    )


def registered_name(name_or_path: str | Path) -> str | None:
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
        raise UsageError(
            f"{source} was found for the registered name {name!r} but holds another "
            f"architecture: {'; '.join(differ)}. Put the right weights there, or pass the file "
            "path itself to load what it holds"
        )


def read_config(
    weights: Path,
    config_path: Path | None,
    shapes: dict[str, tuple[int, ...]],
    metadata: dict[str, str],
    download: bool = True,
) -> StellarConfig:
    """The configuration of ``weights``: its ``config.json``, else its metadata, else shapes.

    A model table (the hub layout) gives its entry for the file and the entry's backbone
    (:func:`stellar.models.layout.table_config`); our ``config.json`` must agree with the
    configuration stored in the file itself; a file with neither is read from its tensor
    shapes, and the values no shape fixes are logged as defaulted.
    """
    embedded = _embedded_config(metadata, weights)
    if config_path is not None:
        data = read_json(config_path)
        if is_model_table(data):
            return table_config(data, config_path, weights, shapes, download)
        try:
            config = StellarConfig.from_dict(data)
        except ValueError as err:
            raise UsageError(f"{config_path}: {err}") from None
        if embedded is not None and embedded != config:
            differ = _differences(config.to_dict(), embedded.to_dict())
            raise UsageError(
                f"{config_path} disagrees with the configuration stored in {weights}: "
                f"{'; '.join(differ)}. Which one is right is not clear: remove or fix the "
                "config.json, or load the weights file alone"
            )
        return config
    if embedded is not None:
        return embedded
    config = infer_config({k: torch.empty(v, device="meta") for k, v in shapes.items()})
    logger.warning(
        "no configuration for %s: read the architecture from the tensor shapes; not fixed by "
        "any tensor, so defaulted: %s. Put a config.json beside the weights to be sure",
        weights,
        ", ".join(defaulted_fields(config)),
    )
    return config


def _embedded_config(metadata: dict[str, str], weights: Path) -> StellarConfig | None:
    if CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        return StellarConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    except (json.JSONDecodeError, ValueError) as err:
        raise UsageError(f"{weights}: the config in its metadata is invalid: {err}") from None


def _differences(ours: dict, theirs: dict, prefix: str = "") -> list[str]:
    """``field: config.json X, weights file Y`` for every differing (nested) field."""
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: config.json {a!r}, weights file {b!r}")
    return out


def carries_decoder(keys: Iterable[str]) -> bool:
    """Whether official-layout ``keys`` include reconstruction-decoder tensors."""
    return any(k.startswith(_DECODER_KEYS) and not is_known_unused(k) for k in keys)


def read_architecture(
    name_or_path: str | Path, cache_dir: str | Path | None = None, download: bool = True
) -> tuple[Path, dict[str, tuple[int, ...]], StellarConfig]:
    """The weights file, its tensor shapes and its config, read without loading any tensor.

    A registered name's weights must have that name's architecture
    (:func:`check_matches_name`).
    """
    weights, config_path = resolve(name_or_path, cache_dir, download)
    shapes, metadata = read_header(weights)
    config = read_config(weights, config_path, shapes, metadata, download)
    name = registered_name(name_or_path)
    if name is not None:
        check_matches_name(config, name, weights)
    return weights, shapes, config


def load_pretrained(
    cls: type[STELLAR],
    name_or_path: str | Path,
    purpose: str = "encode",
    vq_model: str | Path | MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> STELLAR:
    """What :meth:`STELLAR.from_pretrained` does (see :func:`stellar.load_stellar`)."""
    # checks that need only the config come before the tensors are read
    weights, shapes, config = read_architecture(name_or_path, cache_dir, download)
    if purpose == "reconstruct" and not carries_decoder(shapes):
        raise _no_decoder(str(weights))  # before asking for a tokenizer it could not use
    tokenizer = tokenizer_for(config, vq_model, purpose, download)
    state, _ = read_state_dict(weights)
    model = cls(config, purpose=purpose)
    load_official_state(model, state, source=str(weights))
    return finish(model, purpose, tokenizer, device, dtype)


def load_official_state(
    model: STELLAR, state: dict[str, Tensor], source: str = "checkpoint"
) -> None:
    """Load an official-layout state dict into ``model`` strictly (see :func:`load_stellar`).

    Every tensor is loaded, on the known-unused list, or belongs to a part ``model.purpose``
    does not build; a missing, unexpected or wrong-shape tensor raises ValueError naming it.
    """
    mapped, unused, unknown = from_official(state)
    if unknown:
        raise UsageError(
            f"{source}: unexpected keys that STELLAR does not know: {listing(unknown)}"
        )
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("tokenizer.")}
    extra = [k for k in mapped if k not in expected]
    # Only a module this purpose does not build may be left out; an extra tensor inside a
    # built module (a decoder layer too many, a stray head tensor) would be silently dropped.
    not_built = [k for k in extra if _part(k) is not None and getattr(model, _part(k)) is None]
    unexpected = [k for k in extra if k not in not_built]
    if unexpected:  # named as in the file (official layout), where the user can find them
        names = sorted(to_official({k: mapped[k] for k in unexpected}))
        raise UsageError(
            f"{source}: unexpected keys for this architecture (purpose={model.purpose!r}): "
            f"{listing(names)}"
        )
    absent = _absent_parts(model, [k for k in expected if k not in mapped], set(mapped), source)
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    check_state(
        shapes,
        mapped,
        source=source,
        target=f"this STELLAR architecture (purpose={model.purpose!r})",
        unused=not_built,
        may_be_missing=[f"{part}." for part in absent],
    )
    check_finite({k: v for k, v in mapped.items() if k in expected}, source)
    if unused:
        logger.debug(
            "%s: %d known-unused tensors skipped (%s)", source, len(unused), listing(unused)
        )
    if not_built:
        logger.info(
            "%s: %d tensors of parts that purpose=%r does not build were left out (%s)",
            source,
            len(not_built),
            model.purpose,
            listing(not_built, 3),
        )
    model.load_state_dict({k: mapped[k] for k in expected if k in mapped}, strict=False)


def _absent_parts(model: STELLAR, missing: list[str], present: set[str], source: str) -> set[str]:
    """The optional parts the file lacks entirely (they start fresh for pretraining)."""
    optional = [k for k in missing if _part(k) is not None]
    # A part the file carries only in pieces is damaged, not absent: never half random.
    carried = {_part(k) for k in present}
    partial = [k for k in optional if _part(k) in carried]
    if partial:
        raise UsageError(f"{source}: missing keys: {listing(partial)}")
    if any(_part(k) == "decoder" for k in optional) and model.purpose == "reconstruct":
        raise _no_decoder(source)
    if optional:
        logger.warning(
            "%s lacks %d tensors of the decoder / clustering heads; they start from random "
            "init for pretraining (%s)",
            source,
            len(optional),
            listing(optional, 3),
        )
    return {_part(k) for k in optional}


def _no_decoder(source: str) -> UsageError:
    return UsageError(
        f"{source} carries no reconstruction decoder (e.g. an encoder-only feature release), "
        "so purpose='reconstruct' cannot work: use a checkpoint with the decoder, or "
        "purpose='encode'"
    )


def _part(key: str) -> str | None:
    """The optional module (our names) that ``key`` belongs to, or None."""
    head = key.split(".", 1)[0]
    return head if head in OPTIONAL_PARTS else None


def tokenizer_for(
    config: StellarConfig,
    vq_model: str | Path | MaskGITVQGAN | None,
    purpose: str,
    download: bool = True,
) -> MaskGITVQGAN | None:
    """The tokenizer to attach (None: not needed or not given), checked against ``config``."""
    needs = purpose in ("reconstruct", "pretrain") and config.decoder_head == "vq"
    if vq_model is None:
        if needs and purpose == "reconstruct":
            raise UsageError(
                "this model's decoder predicts MaskGIT-VQGAN codes: pass vq_model='maskgit-vqgan' "
                "(TiTok's released tokenizer, found or fetched by name) or the path of "
                "maskgit-vqgan-imagenet-f16-256.bin"
            )
        return None
    if not needs:
        logger.warning(
            "vq_model ignored: purpose=%r with a %r head does not use it",
            purpose,
            config.decoder_head,
        )
        return None
    if isinstance(vq_model, MaskGITVQGAN):
        tokenizer = vq_model
    else:
        tokenizer = load_vqgan(vq_model, download=download)
    check_tokenizer(config, tokenizer, "" if isinstance(vq_model, MaskGITVQGAN) else str(vq_model))
    return tokenizer


def check_tokenizer(config: StellarConfig, tokenizer: MaskGITVQGAN, where: str = "") -> None:
    """Refuse a tokenizer that does not fit the vq head, before any work.

    The head's logits index the tokenizer's codebook, so the sizes must agree (another size
    fails mid-run). The targets are the codes of the image resized to grid x f (f the
    tokenizer's downsampling), so f must be between the patch size p and 2p: f = p codes the
    image as it is, and the /14 models' f16 tokenizer sees 224 px images at 256 px (the
    official recipe); anything else codes the image at another scale than the one the
    tokenizer was trained for relative to the patches (f < p shrinks it, f >= 2p enlarges it
    at least twice), a configuration mistake rather than a choice.

    Raises:
        UsageError: naming the tokenizer's and the model's values.
    """
    name = f"the MaskGIT-VQGAN tokenizer {where}".rstrip()
    if tokenizer.codebook_size != config.vq_codebook_size:
        raise UsageError(
            f"{name} has a codebook of {tokenizer.codebook_size} codes, but this model's vq "
            f"head predicts {config.vq_codebook_size} (vq_codebook_size): pass the tokenizer "
            "the model was trained with"
        )
    f, p = tokenizer.downsample_factor, config.encoder.patch_size
    if not p <= f < 2 * p:
        raise UsageError(
            f"{name} downsamples by {f}, but this model's patches are {p} px: one code per "
            f"patch would code the image resized by {f}/{p}; expected a tokenizer with "
            f"p <= f < 2p (f16 for /16 and /14 models)"
        )


def finish(
    model: STELLAR,
    purpose: str,
    tokenizer: MaskGITVQGAN | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> STELLAR:
    """Attach ``tokenizer``; train or eval mode and gradients by purpose; move to ``device`` /
    ``dtype``."""
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    training = purpose == "pretrain"
    model.requires_grad_(training).train(training)
    if model.tokenizer is not None:
        model.tokenizer.requires_grad_(False).eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
