"""Named model sizes: the released checkpoints and small presets for CPU work.

Each entry only sets dimensions. A released name's weights are ``<name>.safetensors`` in the
hub repository ``microsoft/STELLAR`` (:func:`stellar.load_stellar`).
"""

from __future__ import annotations

import copy
import fnmatch

from stellar.models.config import EncoderConfig, StellarConfig


def list_models(pattern: str = "*", released_only: bool = False) -> list[str]:
    """Registered model names matching the shell-style ``pattern`` (as timm's), sorted;
    ``released_only`` keeps those with official weights."""
    names = fnmatch.filter(_REGISTRY, pattern)
    return sorted(n for n in names if is_released(n) or not released_only)


def is_released(name: str) -> bool:
    """Whether official weights exist for ``name`` (as opposed to a random-init preset)."""
    return name in RELEASED_SIZES


def get_config(name: str) -> StellarConfig:
    """The config of a registered name; unknown names raise a ValueError listing the known."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(list_models())}")
    return copy.deepcopy(_REGISTRY[name])


def _vit(width: int, depth: int, heads: int, patch: int = 16) -> EncoderConfig:
    return EncoderConfig(width, depth, heads, 4 * width, image_size=224, patch_size=patch)


# The MAE initialisations the released models were trained from, as their HF config.json says.
BACKBONES: dict[str, EncoderConfig] = {
    "facebook/vit-mae-base": _vit(768, 12, 12),
    "facebook/vit-mae-large": _vit(1024, 24, 16),
    "facebook/vit-mae-huge": _vit(1280, 32, 16, patch=14),
}
# The released checkpoints: name -> (backbone, concept tokens); 224 px, VQ decoder head.
RELEASED_SIZES: dict[str, tuple[str, int]] = {
    "stellar-b16": ("facebook/vit-mae-base", 16),
    "stellar-b8": ("facebook/vit-mae-base", 8),  # ablation: 8 concept tokens
    "stellar-b24": ("facebook/vit-mae-base", 24),  # ablation: 24 concept tokens
    "stellar-l16": ("facebook/vit-mae-large", 16),
    "stellar-h16": ("facebook/vit-mae-huge", 16),  # ViT-H/14: a 16x16 patch grid
}
_REGISTRY: dict[str, StellarConfig] = {
    name: StellarConfig(encoder=BACKBONES[backbone], num_sparse_tokens=tokens)
    for name, (backbone, tokens) in RELEASED_SIZES.items()
}
# The reference fixture's size: 64 px, patch 8, width 96, 3 blocks, 6 tokens, pixel head.
_REGISTRY["stellar-tiny"] = StellarConfig(
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
