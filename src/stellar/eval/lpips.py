"""LPIPS perceptual distance, VGG variant (Zhang et al. 2018, lpips v0.1).

Weights are never downloaded: :func:`load_lpips` reads a torchvision ``vgg16`` state dict
(``features.{i}.weight/bias``; ``classifier.*`` is accepted and ignored) and the lpips v0.1
``vgg.pth`` linear layers (``lin{0..4}.model.1.weight``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from stellar.checkpoint.weights import load_strict, read_state_dict

logger = logging.getLogger(__name__)

# ScalingLayer constants of lpips v0.1 (inputs in [-1, 1])
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# torchvision vgg16 "D" configuration: channels per conv, "M" = 2x2 max-pool
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# indices in ``features`` of the ReLUs LPIPS taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
_TAPS = (3, 8, 15, 22, 29)
_TAP_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS distance with a VGG16 backbone (weights: :func:`load_lpips`): torchvision's
    ``vgg16().features`` (keys ``net.features.{i}.weight/bias``) up to relu5_3, without the last
    max-pool, which LPIPS never uses, and lpips' linear head of each tap (keys
    ``lin{k}.model.1.weight``: dropout, inactive at eval, then a 1x1 conv to one channel)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU()]
                in_ch = int(v)
        self.net = nn.Module()
        self.net.features = nn.Sequential(*layers)
        for k, channels in enumerate(_TAP_CHANNELS):
            self.add_module(f"lin{k}", nn.Module())
            head = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))
            getattr(self, f"lin{k}").model = head
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perceptual distance (B,) per pair of (B, 3, H, W) images in [0, 1]."""
        # one backbone pass over both inputs, mapped to [-1, 1]
        h = (torch.cat([2 * x - 1, 2 * y - 1]) - self.shift) / self.scale
        total = torch.zeros(x.shape[0], dtype=h.dtype, device=h.device)
        for i, layer in enumerate(self.net.features):
            h = layer(h)
            if i in _TAPS:
                fx, fy = F.normalize(h, dim=1, eps=1e-10).chunk(2)
                head = getattr(self, f"lin{_TAPS.index(i)}").model
                total = total + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total


def load_lpips(
    vgg_weights_path: str | Path,
    lpips_weights_path: str | Path,
    device: torch.device | str = "cpu",
) -> LPIPS:
    """The frozen LPIPS-VGG in eval mode, every key checked, from the two local files of the
    module docstring."""
    vgg_path, lin_path = Path(vgg_weights_path), Path(lpips_weights_path)
    model = LPIPS()
    vgg_sd, _ = read_state_dict(vgg_path)
    load_strict(
        model.net,
        vgg_sd,
        source=str(vgg_path),
        target="torchvision's vgg16",
        unused=("classifier.",),
    )
    lin_sd, _ = read_state_dict(lin_path)
    # the file holds the five heads only; the VGG part was loaded above
    load_strict(
        model, lin_sd, source=str(lin_path), target="the lpips v0.1 heads", may_be_missing=("net.",)
    )
    model.requires_grad_(False)
    logger.info("loaded LPIPS-VGG from %s and %s", vgg_path, lin_path)
    return model.to(device).eval()
