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
- The head count comes from the HF ``config.json`` when there is one, else from the standard
  ViT of that width (:func:`stellar.models.infer.heads_for_width`: ViT-H has 16 heads of
  80), logged.
- LayerNorm epsilon: the HF config's ``layer_norm_eps`` when present, 1e-6 for the original
  MAE ``.pth`` (timm's ViT), else 1e-12 (HF's default).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from stellar.checkpoint.mae import load_mae_weights
from stellar.errors import UsageError
from stellar.eval.encoder import BASELINE_KEYS, STELLAR_KEYS
from stellar.models.config import DecoderConfig, EncoderConfig
from stellar.models.encoder import ViTEncoder
from stellar.models.infer import heads_for_width
from stellar.models.stellar import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BASELINE_KEYS",
    "BASELINE_KINDS",
    "BaselineConfig",
    "STELLAR_KEYS",
    "ViTBaseline",
    "load_baseline",
    "parse_baseline",
]

logger = logging.getLogger(__name__)

BASELINE_KINDS: dict[str, str] = {"mae": "MAE", "vit": "ViT"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class BaselineConfig:
    """The parts of a STELLAR config the protocols read (encoder dims, probe decoder size)."""

    encoder: EncoderConfig
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    fourier_features: int = 256


class ViTBaseline(nn.Module):
    """A frozen plain ViT with STELLAR's ``encode`` interface, restricted to ``cls``/``dense``.

    Args:
        config: encoder dimensions.
        name: the label of the baseline's row in result tables.
    """

    feature_keys: tuple[str, ...] = BASELINE_KEYS

    def __init__(self, config: BaselineConfig, name: str = "ViT") -> None:
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

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return self.encoder.cls_token.dtype

    def check_images(self, images: Tensor) -> None:
        """Raise ValueError unless ``images`` is a (B, 3, H, W) float batch, H, W multiples of p."""
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected images of shape (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"expected floating-point images in [0, 1], got {images.dtype}")
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {self.patch_size}"
            )

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """Encode (B, 3, H, W) RGB in [0, 1] -> ``cls`` (B, 1, d), ``dense`` (B, n, d)."""
        self.check_images(images)
        return self.forward_encode(images)

    def forward_encode(self, images: Tensor) -> dict[str, Tensor]:
        """:meth:`encode` without input checks."""
        pixels = ((images - self.pixel_mean) / self.pixel_std).to(self.dtype)
        tokens = self.encoder.forward_features(pixels)
        return {"cls": tokens[:, :1], "dense": tokens[:, 1:]}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Same as :meth:`encode`."""
        return self.encode(images)


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
    """Build the frozen baseline of ``spec`` (``mae:PATH`` or ``vit:PATH``), in eval mode.

    Raises:
        ValueError: a malformed spec, an unreadable checkpoint, or shapes that do not describe
            a ViT.
    """
    kind, path = parse_baseline(spec)
    weights = load_mae_weights(path)
    tensors = weights.tensors
    hf = weights.config or {}
    patch = tensors["patch_embed.weight"]
    width, channels, p = patch.shape[0], patch.shape[1], patch.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in tensors if (m := _BLOCK.match(k)))
    n = tensors["pos_embed"].shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{path}: {n} position embeddings do not form a square grid")
    heads = hf.get("num_attention_heads")
    if heads is None:  # ViT-H is 1280 wide with 16 heads of 80: not always width / 64
        heads = heads_for_width(width)
        logger.info(
            "%s has no config.json: assuming %d attention heads (width %d)", path, heads, width
        )
    default_eps = 1e-6 if weights.layout == "original" else 1e-12
    enc = EncoderConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=int(heads),
        intermediate_size=tensors["blocks.0.mlp.fc1.weight"].shape[0],
        image_size=side * p,
        patch_size=p,
        num_channels=channels,
        layer_norm_eps=float(hf.get("layer_norm_eps", default_eps)),
        qkv_bias=True,
    )
    if width % enc.num_attention_heads:
        raise ValueError(f"{path}: width {width} is not divisible by {heads} attention heads")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {hf['hidden_act']!r}; the baseline runs only gelu")
    model = ViTBaseline(BaselineConfig(enc), name=f"{BASELINE_KINDS[kind]} ({path.name})")
    model.encoder.load_state_dict(tensors, strict=True)
    mean_std = _preprocessor_mean_std(path)
    if mean_std is not None:  # e.g. Google's HF ViTs were trained on (x - 0.5) / 0.5
        model.pixel_mean.copy_(torch.tensor(mean_std[0]).view(1, 3, 1, 1))
        model.pixel_std.copy_(torch.tensor(mean_std[1]).view(1, 3, 1, 1))
        logger.info("%s: input mean %s, std %s from preprocessor_config.json", path, *mean_std)
    model.requires_grad_(False).eval()
    logger.info(
        "baseline %s: ViT width %d, depth %d, heads %d, patch %d, %d px",
        model.name,
        width,
        depth,
        enc.num_attention_heads,
        p,
        enc.image_size,
    )
    return model.to(device) if device is not None else model
