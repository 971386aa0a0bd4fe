"""A plain ViT baseline (``--baseline mae:PATH`` or ``vit:PATH``: a local MAE / HF ViT
checkpoint, HF directory, weights file or original MAE ``.pth``) that evaluates through the
same protocols. Its outputs are ``cls`` (B, 1, d) and ``dense`` (B, n, d), the patch tokens
after the final LayerNorm, with no masking (MAE's encoder sees every patch).

Inputs are normalised inside the model with the ImageNet mean / std (what MAE was trained
with), unless an HF ``preprocessor_config.json`` beside the weights gives others (Google's ViTs
use 0.5 / 0.5). The architecture comes from the tensor shapes, the head count from the HF
``config.json`` when there is one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from stellar.checkpoint.mae import load_mae_weights
from stellar.checkpoint.weights import load_strict
from stellar.errors import UsageError
from stellar.models.config import StellarConfig
from stellar.models.infer import infer_config
from stellar.models.networks import ViTEncoder
from stellar.models.stellar import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

BASELINE_KINDS: dict[str, str] = {"mae": "MAE", "vit": "ViT"}


class ViTBaseline(nn.Module):
    """A frozen plain ViT with STELLAR's ``encode`` interface, restricted to ``cls``/``dense``;
    ``config`` is a STELLAR config whose encoder is the ViT's."""

    feature_keys: tuple[str, ...] = ("cls", "dense")

    def __init__(self, config: StellarConfig, name: str = "ViT") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.patch_size = config.encoder.patch_size
        self.encoder = ViTEncoder(config.encoder)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.encoder.cls_token.device

    def forward_encode(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> ``cls`` (B, 1, d), ``dense`` (B, n, d)."""
        pixels = ((images - self.pixel_mean) / self.pixel_std).to(self.pixel_mean.dtype)
        tokens = self.encoder.forward_features(pixels)
        return {"cls": tokens[:, :1], "dense": tokens[:, 1:]}

    encode = forward = forward_encode  # its inputs come from the protocols' own pipeline


def parse_baseline(spec: str) -> tuple[str, Path]:
    """``"mae:PATH"`` / ``"vit:PATH"`` -> (kind, path)."""
    kind, sep, path = str(spec).partition(":")
    if not sep or kind.lower() not in BASELINE_KINDS or not path:
        raise UsageError(
            f"expected --baseline as mae:PATH or vit:PATH (a local MAE / HF ViT checkpoint), "
            f"got {spec!r}"
        )
    p = Path(path)
    if not p.exists():
        raise UsageError(f"baseline checkpoint {str(p)!r} does not exist")
    return kind.lower(), p


def load_baseline(spec: str, device: torch.device | str | None = None) -> ViTBaseline:
    """The frozen baseline of ``spec`` (``mae:PATH`` or ``vit:PATH``), in eval mode."""
    kind, path = parse_baseline(spec)
    weights = load_mae_weights(path)
    hf = weights.config or {}
    shapes = {f"encoder.{k}": tuple(v.shape) for k, v in weights.tensors.items()}
    # without a config.json: the standard ViT's heads for the width (ViT-H: 16 of 80)
    enc = infer_config(shapes, heads=hf.get("num_attention_heads")).encoder
    default_eps = 1e-6 if weights.layout == "original" else 1e-12  # timm's ViT, HF's default
    enc = dataclasses.replace(enc, layer_norm_eps=float(hf.get("layer_norm_eps", default_eps)))
    model = ViTBaseline(StellarConfig(encoder=enc), name=f"{BASELINE_KINDS[kind]} ({path.name})")
    load_strict(model.encoder, weights.tensors, source=str(path), target="a ViT encoder")
    file = (path if path.is_dir() else path.parent) / "preprocessor_config.json"
    if file.is_file():  # e.g. Google's HF ViTs were trained on (x - 0.5) / 0.5
        try:
            pre = json.loads(file.read_text())
            mean, std = [float(v) for v in pre["image_mean"]], [float(v) for v in pre["image_std"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{file}: expected image_mean and image_std lists ({err})") from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"{file}: expected 3 means and 3 positive stds, got {mean}, {std}")
        model.pixel_mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
        model.pixel_std.copy_(torch.tensor(std).view(1, 3, 1, 1))
        logger.info("%s: input mean %s, std %s from %s", path, mean, std, file.name)
    model.requires_grad_(False).eval()
    logger.info("baseline %s: %s", model.name, enc)
    return model.to(device) if device is not None else model
