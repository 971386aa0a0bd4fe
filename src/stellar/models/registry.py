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


@register("stellar-b16", released=True)
def stellar_b16() -> StellarConfig:
    """ViT-B/16, 224 px, 16 concept tokens, VQ decoder head."""
    return StellarConfig(encoder=_vit(768, 12, 12), num_sparse_tokens=16)


@register("stellar-b8", released=True)
def stellar_b8() -> StellarConfig:
    """Ablation: ViT-B/16 with 8 concept tokens."""
    return StellarConfig(encoder=_vit(768, 12, 12), num_sparse_tokens=8)


@register("stellar-b24", released=True)
def stellar_b24() -> StellarConfig:
    """Ablation: ViT-B/16 with 24 concept tokens."""
    return StellarConfig(encoder=_vit(768, 12, 12), num_sparse_tokens=24)


@register("stellar-l16", released=True)
def stellar_l16() -> StellarConfig:
    """ViT-L/16, 224 px, 16 concept tokens."""
    return StellarConfig(encoder=_vit(1024, 24, 16), num_sparse_tokens=16)


@register("stellar-h16", released=True)
def stellar_h16() -> StellarConfig:
    """ViT-H/14 at 224 px (a 16x16 patch grid), 16 concept tokens."""
    return StellarConfig(encoder=_vit(1280, 32, 16, patch=14), num_sparse_tokens=16)


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
