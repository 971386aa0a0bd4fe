"""The HF-ViT weight initialisation that every STELLAR module applies to its own layers."""

from __future__ import annotations

from torch import nn

INIT_STD = 0.02


def init_vit_layers_(module: nn.Module) -> None:
    """Truncated normal (std 0.02) Linear/Conv2d weights, zero biases, unit LayerNorms.

    Applies to every ``nn.Linear``, ``nn.Conv2d`` and ``nn.LayerNorm`` inside ``module``
    (itself included); other layers, e.g. ``nn.ConvTranspose2d``, keep PyTorch's default, as
    HF's ViT initialisation does.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
