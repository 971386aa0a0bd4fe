"""Named model sizes: the released checkpoints and small presets for CPU work.

Each entry only sets dimensions (as timm's ``@register_model`` functions do). A released name's
weights are ``<name>.safetensors`` in the hub repository ``microsoft/STELLAR``;
:func:`stellar.load_stellar` finds them (:mod:`stellar.checkpoint.cache`).
"""

from __future__ import annotations

from collections.abc import Callable

from stellar.models.config import EncoderConfig, StellarConfig

_REGISTRY: dict[str, Callable[[], StellarConfig]] = {}
_RELEASED: set[str] = set()


def register(name: str, released: bool = False) -> Callable:
    """Decorator registering a config factory under ``name``."""

    def wrap(fn: Callable[[], StellarConfig]) -> Callable[[], StellarConfig]:
        _REGISTRY[name] = fn
        if released:
            _RELEASED.add(name)
        return fn

    return wrap


def list_models(released_only: bool = False) -> list[str]:
    """Registered model names (sorted); ``released_only`` keeps those with official weights."""
    return sorted(n for n in _REGISTRY if n in _RELEASED or not released_only)


def is_released(name: str) -> bool:
    """Whether official weights exist for ``name`` (as opposed to a random-init preset)."""
    return name in _RELEASED


def get_config(name: str) -> StellarConfig:
    """The config of a registered name; unknown names raise a ValueError listing the known."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(list_models())}")
    return _REGISTRY[name]()


def _vit(width: int, depth: int, heads: int, patch: int = 16, image: int = 224) -> EncoderConfig:
    return EncoderConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        image_size=image,
        patch_size=patch,
    )


# The released checkpoints: name -> (encoder width, depth, heads, patch), concept tokens.
# All are 224 px with the VQ decoder head; ViT-H/14 makes a 16x16 patch grid.
RELEASED_SIZES: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "stellar-b16": ((768, 12, 12, 16), 16),
    "stellar-b8": ((768, 12, 12, 16), 8),  # ablation: 8 concept tokens
    "stellar-b24": ((768, 12, 12, 16), 24),  # ablation: 24 concept tokens
    "stellar-l16": ((1024, 24, 16, 16), 16),
    "stellar-h16": ((1280, 32, 16, 14), 16),
}


def _released(encoder: tuple[int, int, int, int], tokens: int) -> Callable[[], StellarConfig]:
    width, depth, heads, patch = encoder
    return lambda: StellarConfig(encoder=_vit(width, depth, heads, patch), num_sparse_tokens=tokens)


for _name, (_encoder, _tokens) in RELEASED_SIZES.items():
    register(_name, released=True)(_released(_encoder, _tokens))


@register("stellar-tiny")
def stellar_tiny() -> StellarConfig:
    """The reference fixture's size: 64 px, patch 8, width 96, 3 blocks, 6 tokens, pixel head."""
    return StellarConfig(
        encoder=EncoderConfig(
            hidden_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=384,
            image_size=64,
            patch_size=8,
        ),
        num_sparse_tokens=6,
        num_decoder_layers=1,
        decoder_head="pixel",
        num_clusters=128,
        prototype_dim=32,
    )
