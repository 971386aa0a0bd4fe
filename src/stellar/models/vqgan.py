"""Frozen MaskGIT-VQGAN image tokenizer (third-party weights; the vq head's targets).

The tokenizer turns a [0, 1] RGB image into a grid of discrete codes (f16: one code per 16x16
pixels, codebook 1024 x 256) and back. STELLAR's ``vq`` reconstruction head predicts these codes.
The state-dict layout matches the released ``maskgit-vqgan-imagenet-f16-256.bin`` exactly, so the
released file (``fun-research/TiTok``, found by the name ``"maskgit-vqgan"``) loads strictly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stellar.checkpoint.weights import WeightsNotFoundError, hub_file, load_strict, read_state_dict
from stellar.errors import UsageError

if TYPE_CHECKING:
    from stellar.models.config import StellarConfig


logger = logging.getLogger(__name__)

_GROUPS = 32
_EPS = 1e-6
# TiTok's release of the tokenizer, found by the name "maskgit-vqgan" (or its file name)
TOKENIZER_NAME = "maskgit-vqgan"
TOKENIZER_REPO = "fun-research/TiTok"
TOKENIZER_FILE = "maskgit-vqgan-imagenet-f16-256.bin"


def _conv(in_ch: int, out_ch: int, kernel: int, bias: bool) -> nn.Conv2d:
    # The reference pads TF-style "same" (total k-1, floor before / ceil after). Every conv here
    # has stride 1 and an odd kernel, where that split is symmetric and equals padding=k//2.
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_GROUPS, channels, eps=_EPS, affine=True)


class _ResBlock(nn.Module):
    """GN → SiLU → conv3x3 → GN → SiLU → conv3x3, with the released weights' residual quirk."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = _conv(in_ch, out_ch, 3, bias=False)
        self.norm2 = _norm(out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3, bias=False)
        self.nin_shortcut = _conv(out_ch, out_ch, 1, bias=False) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            # The released weights were trained with the 1x1 shortcut applied to the block's
            # output (so the input is dropped); reproducing it is required for parity.
            return h + self.nin_shortcut(h)
        return h + x


class _Level(nn.Module):
    """One resolution level: res blocks, then an optional nearest x2 upsample + conv3x3."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            _ResBlock(in_ch if j == 0 else out_ch, out_ch) for j in range(num_blocks)
        )
        self.upsample_conv = _conv(out_ch, out_ch, 3, bias=True) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class _Encoder(nn.Module):
    def __init__(self, chans: list[int], blocks: int, z_channels: int) -> None:
        super().__init__()
        ins = [chans[0], *chans[:-1]]
        self.conv_in = _conv(3, chans[0], 3, bias=False)
        self.down = nn.ModuleList(
            _Level(i, o, blocks, upsample=False) for i, o in zip(ins, chans, strict=True)
        )
        self.mid = nn.ModuleList(_ResBlock(chans[-1], chans[-1]) for _ in range(blocks))
        self.norm_out = _norm(chans[-1])
        self.conv_out = _conv(chans[-1], z_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        last = len(self.down) - 1
        for i, level in enumerate(self.down):
            x = level(x)
            if i != last:
                x = F.avg_pool2d(x, kernel_size=2, stride=2)
        for blk in self.mid:
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class _Decoder(nn.Module):
    def __init__(self, chans: list[int], blocks: int, z_channels: int) -> None:
        super().__init__()
        # up.{i} is indexed like the encoder's level i; it runs coarse (i = L-1) to fine (i = 0)
        # and receives the channels of level i+1 (or of the mid blocks at the coarsest level).
        ins = [*chans[1:], chans[-1]]
        self.conv_in = _conv(z_channels, chans[-1], 3, bias=True)
        self.mid = nn.ModuleList(_ResBlock(chans[-1], chans[-1]) for _ in range(blocks))
        self.up = nn.ModuleList(
            _Level(ins[i], chans[i], blocks, upsample=i != 0) for i in range(len(chans))
        )
        self.norm_out = _norm(chans[0])
        self.conv_out = _conv(chans[0], 3, 3, bias=True)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    """Codebook lookup; reached as ``MaskGITVQGAN.quantize`` (the name the released keys fix)."""

    def __init__(self, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z: Tensor) -> Tensor:
        """The nearest codebook entry (squared L2) of features (B, codebook_dim, h, w): (B, h*w)
        int64 codes, row-major over (h, w).

        Distances are taken in at least fp32 as ``|z|^2 + |e|^2 - 2 z.e`` (the reference
        formulation, so near-ties resolve as in the reference); ties go to the lowest index.
        """
        dim = self.embedding.embedding_dim
        compute = torch.promote_types(z.dtype, torch.float32)
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim).to(compute)
        book = self.embedding.weight.to(compute)
        # A caller's autocast would run the matmul in bf16 and flip near-tie codes.
        with torch.autocast(device_type=z.device.type, enabled=False):
            dist = (
                flat.pow(2).sum(dim=1, keepdim=True)
                + book.pow(2).sum(dim=1)[None, :]
                - 2.0 * flat @ book.t()
            )
        return dist.argmin(dim=1).reshape(z.shape[0], -1)


class MaskGITVQGAN(nn.Module):
    """MaskGIT-VQGAN tokenizer; defaults are the released f16-256 configuration
    (``len(channel_mult) - 1`` halvings of resolution; every level's channels a multiple of 32).

    Frozen on construction and always in eval mode (``train()`` is a no-op, so a parent's
    ``.train()`` cannot flip it).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        codebook_size: int = 1024,
    ) -> None:
        super().__init__()
        chans = [hidden_channels * int(m) for m in channel_mult]
        self.codebook_size = codebook_size
        self.downsample_factor = 2 ** (len(chans) - 1)
        self.encoder = _Encoder(chans, num_res_blocks, z_channels)
        self.decoder = _Decoder(chans, num_res_blocks, z_channels)
        self.quantize = VectorQuantizer(codebook_size, z_channels)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> MaskGITVQGAN:
        """Keep the frozen tokenizer in eval mode whatever ``mode`` is asked."""
        return super().train(False)

    def encode_features(self, images: Tensor) -> Tensor:
        """Pre-quantisation features (B, z_channels, H/f, W/f) of images (B, 3, H, W) in [0, 1]
        (no normalisation), f = ``downsample_factor`` dividing H and W."""
        # The codes are training targets: computed in the tokenizer's own dtype, never in a
        # caller's autocast precision (bf16 changes a few percent of them).
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.encoder(images.to(self.encoder.conv_in.weight.dtype))

    def encode(self, images: Tensor) -> Tensor:
        """Tokenise images (B, 3, H, W) in [0, 1] into (B, (H/f)*(W/f)) int64 codes, row-major
        over the code grid."""
        return self.quantize(self.encode_features(images))

    def decode(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Images (B, 3, h*f, w*f) in [0, 1] from (B, n) codes in [0, codebook_size),
        row-major over the (h, w) ``grid`` (default: square). The reference output is
        clamped to [0, 1] too (the fixture holds exact 0s and 1s)."""
        b, n = codes.shape
        h, w = grid or (math.isqrt(n),) * 2
        z = self.quantize.embedding(codes.long()).reshape(b, h, w, -1)
        images = self.decoder(z.permute(0, 3, 1, 2).contiguous())  # from (B, h, w, D)
        return images.clamp(0.0, 1.0)


def _count(keys: Mapping[str, Tensor], pattern: str) -> int:
    """How many consecutive i = 0, 1, ... have ``pattern.format(i)`` among ``keys``."""
    n = 0
    while pattern.format(n) in keys:
        n += 1
    return n


def infer_vqgan_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """:class:`MaskGITVQGAN`'s arguments read from the tensor shapes.

    Raises:
        ValueError: a key needed to read them is absent.
    """
    try:
        hidden = state["encoder.conv_in.weight"].shape[0]
        levels = _count(state, "encoder.down.{}.block.0.conv1.weight")
        outs = [
            state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(max(levels, 1))
        ]
        return {
            "hidden_channels": hidden,
            "channel_mult": [c // hidden for c in outs],
            "num_res_blocks": _count(state, "encoder.down.0.block.{}.conv1.weight"),
            "z_channels": state["encoder.conv_out.weight"].shape[0],
            "codebook_size": state["quantize.embedding.weight"].shape[0],
        }
    except KeyError as err:
        raise ValueError(f"not a MaskGIT-VQGAN state dict: no {err}") from None


def load_vqgan(path: str | Path) -> MaskGITVQGAN:
    """A frozen fp32 :class:`MaskGITVQGAN` (eval mode), its configuration read from the shapes.

    ``path``: ``"maskgit-vqgan"`` (TiTok's release, through the Hugging Face cache), or a path
    (never downloaded) of ``maskgit-vqgan-imagenet-f16-256.bin`` or a ``.safetensors`` with
    the same keys.

    Raises:
        FileNotFoundError, ValueError: no such file; keys or shapes that do not fit (named).
    """
    if not Path(path).is_file():
        if str(path) not in (TOKENIZER_NAME, TOKENIZER_FILE):
            what = "is a folder" if Path(path).is_dir() else "does not exist"
            raise WeightsNotFoundError(
                f"expected the MaskGIT-VQGAN weights file, but {path} {what} (a path is never "
                f"downloaded): pass the local {TOKENIZER_FILE} (or a .safetensors of its "
                f"keys), or {TOKENIZER_NAME!r} to fetch TiTok's release"
            )
        path = hub_file(TOKENIZER_REPO, TOKENIZER_FILE)
    state, _ = read_state_dict(path)
    try:  # name the file: it is often one of several paths on a command line
        config = infer_vqgan_config(state)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
    # on the meta device: the loaded tensors are the only allocation
    with torch.device("meta"):
        model = MaskGITVQGAN(**config)
    load_strict(model, state, source=str(path), target="the MaskGIT-VQGAN layout", assign=True)
    model.float().requires_grad_(False)
    logger.info("loaded MaskGIT-VQGAN from %s with config %s", path, config)
    return model


def check_tokenizer(config: StellarConfig, tokenizer: MaskGITVQGAN, where: str = "") -> None:
    """Raise ValueError unless the codebook is the vq head's and the downsampling f fits the
    patch size p (p <= f < 2p: the /14 models' f16 tokenizer sees 224 px at 256 px, as in
    the official recipe; other f code the image at another scale than it was trained for)."""
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
            "p <= f < 2p (f16 for /16 and /14 models)"
        )
