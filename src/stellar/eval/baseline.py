"""A plain ViT baseline (MAE or HF ViT weights) that evaluates through the same protocols.

``--baseline mae:PATH`` or ``--baseline vit:PATH`` reads the encoder of a local MAE / HF ViT
checkpoint with :func:`stellar.checkpoint.mae.load_mae_weights` (HF directories, weights files
and original MAE ``.pth`` files) and builds a :class:`~stellar.models.encoder.ViTEncoder` from
the tensor shapes. Its outputs are ``cls`` (B, 1, d) and ``dense`` (B, n, d), the patch tokens
after the final LayerNorm; it has no concept tokens, so ``sparse``, ``spatial`` and
``lowrank`` do not exist.

Decisions:
- Inputs are normalised inside the model with the ImageNet mean / std (what MAE was trained
  with), exactly as STELLAR does, unless an HF ``preprocessor_config.json`` beside the weights
  gives others (Google's ViTs use 0.5 / 0.5); no masking is applied (MAE's encoder sees every
  patch).
- The architecture is read from the tensor shapes (:func:`stellar.models.infer.infer_config`);
  the head count from the HF ``config.json`` when there is one, else the standard ViT's of
  that width.
- LayerNorm epsilon: the HF config's ``layer_norm_eps`` when present, 1e-6 for the original
  MAE ``.pth`` (timm's ViT), else 1e-12 (HF's default).
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
from stellar.models.encoder import ViTEncoder
from stellar.models.infer import infer_config
from stellar.models.stellar import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

BASELINE_KINDS: dict[str, str] = {"mae": "MAE", "vit": "ViT"}


class ViTBaseline(nn.Module):
    """A frozen plain ViT with STELLAR's ``encode`` interface, restricted to ``cls``/``dense``;
    ``config`` is a STELLAR config whose encoder is the ViT's (the protocols read its encoder
    dimensions, the reconstruction probe its decoder size), ``name`` its row's label."""

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
        """The device of the weights."""
        return self.encoder.cls_token.device

    def forward_encode(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> ``cls`` (B, 1, d), ``dense`` (B, n, d)."""
        pixels = ((images - self.pixel_mean) / self.pixel_std).to(self.pixel_mean.dtype)
        tokens = self.encoder.forward_features(pixels)
        return {"cls": tokens[:, :1], "dense": tokens[:, 1:]}

    encode = forward = forward_encode  # its inputs come from the protocols' own pipeline


def parse_baseline(spec: str) -> tuple[str, Path]:
    """``"mae:PATH"`` / ``"vit:PATH"`` -> (kind, path); ValueError on anything else."""
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


def _preprocessor_mean_std(path: Path) -> tuple[list[float], list[float]] | None:
    """``image_mean`` / ``image_std`` of an HF ``preprocessor_config.json`` beside the weights."""
    file = (path if path.is_dir() else path.parent) / "preprocessor_config.json"
    if not file.is_file():
        return None
    try:
        pre = json.loads(file.read_text())
        mean, std = [float(v) for v in pre["image_mean"]], [float(v) for v in pre["image_std"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{file}: expected image_mean and image_std lists ({err})") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{file}: expected 3 means and 3 positive stds, got {mean}, {std}")
    return mean, std


def load_baseline(spec: str, device: torch.device | str | None = None) -> ViTBaseline:
    """The frozen baseline of ``spec`` (``mae:PATH`` or ``vit:PATH``), in eval mode."""
    kind, path = parse_baseline(spec)
    weights = load_mae_weights(path)
    hf = weights.config or {}
    shapes = {f"encoder.{k}": tuple(v.shape) for k, v in weights.tensors.items()}
    # without a config.json: the standard ViT's heads for the width (ViT-H: 16 of 80)
    enc = infer_config(shapes, heads=hf.get("num_attention_heads")).encoder
    default_eps = 1e-6 if weights.layout == "original" else 1e-12  # timm's ViT, HF's
    enc = dataclasses.replace(enc, layer_norm_eps=float(hf.get("layer_norm_eps", default_eps)))
    model = ViTBaseline(StellarConfig(encoder=enc), name=f"{BASELINE_KINDS[kind]} ({path.name})")
    load_strict(model.encoder, weights.tensors, source=str(path), target="a ViT encoder")
    mean_std = _preprocessor_mean_std(path)
    if mean_std is not None:  # e.g. Google's HF ViTs were trained on (x - 0.5) / 0.5
        model.pixel_mean.copy_(torch.tensor(mean_std[0]).view(1, 3, 1, 1))
        model.pixel_std.copy_(torch.tensor(mean_std[1]).view(1, 3, 1, 1))
        logger.info("%s: input mean %s, std %s from preprocessor_config.json", path, *mean_std)
    model.requires_grad_(False).eval()
    logger.info("baseline %s: %s", model.name, enc)
    return model.to(device) if device is not None else model
