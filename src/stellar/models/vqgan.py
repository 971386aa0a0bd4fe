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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stellar.checkpoint.weights import WeightsNotFoundError, hub_file, load_strict, read_state_dict
from stellar.errors import UsageError

if TYPE_CHECKING:
    from stellar.models.config import StellarConfig

__all__ = ["MaskGITVQGAN", "VectorQuantizer", "check_tokenizer", "infer_vqgan_config", "load_vqgan"]

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


@dataclass(frozen=True)
class _Plan:
    """The channel plan the encoder and decoder share (``chans``: each level's channels)."""

    hidden_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    num_channels: int

    @property
    def chans(self) -> list[int]:
        return [self.hidden_channels * m for m in self.channel_mult]


class _Encoder(nn.Module):
    def __init__(self, plan: _Plan) -> None:
        super().__init__()
        chans, blocks = plan.chans, plan.num_res_blocks
        ins = [plan.hidden_channels, *chans[:-1]]
        self.conv_in = _conv(plan.num_channels, plan.hidden_channels, 3, bias=False)
        self.down = nn.ModuleList(
            _Level(i, o, blocks, upsample=False) for i, o in zip(ins, chans, strict=True)
        )
        self.mid = nn.ModuleList(_ResBlock(chans[-1], chans[-1]) for _ in range(blocks))
        self.norm_out = _norm(chans[-1])
        self.conv_out = _conv(chans[-1], plan.z_channels, 1, bias=True)

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
    def __init__(self, plan: _Plan) -> None:
        super().__init__()
        chans, blocks = plan.chans, plan.num_res_blocks
        # up.{i} is indexed like the encoder's level i; it runs coarse (i = L-1) to fine (i = 0)
        # and receives the channels of level i+1 (or of the mid blocks at the coarsest level).
        ins = [*chans[1:], chans[-1]]
        self.conv_in = _conv(plan.z_channels, chans[-1], 3, bias=True)
        self.mid = nn.ModuleList(_ResBlock(chans[-1], chans[-1]) for _ in range(blocks))
        self.up = nn.ModuleList(
            _Level(ins[i], chans[i], blocks, upsample=i != 0) for i in range(len(chans))
        )
        self.norm_out = _norm(chans[0])
        self.conv_out = _conv(chans[0], plan.num_channels, 3, bias=True)

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
        """Nearest codebook entry (squared L2) of every feature vector.

        Distances are taken in at least fp32 as ``|z|^2 + |e|^2 - 2 z.e`` (the reference
        formulation, so near-ties resolve as in the reference); ties go to the lowest index.

        Args:
            z: (B, codebook_dim, h, w) features.

        Returns:
            (B, h*w) int64 codes, row-major over (h, w).
        """
        dim = self.embedding.embedding_dim
        if not isinstance(z, Tensor) or z.ndim != 4 or z.shape[1] != dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"features must have shape (B, {dim}, h, w), got {shape}")
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
    """MaskGIT-VQGAN tokenizer; defaults are the released f16-256 configuration.

    The module is frozen on construction (no parameter requires grad) and always stays in eval
    mode: ``train()`` is a no-op so a parent's ``.train()`` cannot flip it. GroupNorm keeps no
    running statistics, so this only keeps the mode flag consistent.

    Args:
        hidden_channels: Channels of the finest level.
        channel_mult: Channel multiplier per level; ``len - 1`` halvings of resolution.
        num_res_blocks: Res blocks per level, and number of mid blocks.
        z_channels: Channels of the pre-quantisation features.
        codebook_size: Number of codebook entries.
        codebook_dim: Codebook entry size; must equal ``z_channels``.
        num_channels: Image channels.
        resolution: Nominal training resolution (metadata only; any divisible size works).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        codebook_size: int = 1024,
        codebook_dim: int = 256,
        num_channels: int = 3,
        resolution: int = 256,
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        if len(channel_mult) == 0 or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be non-empty positive ints, got {channel_mult}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        bad = [hidden_channels * m for m in channel_mult if (hidden_channels * m) % _GROUPS]
        if hidden_channels < 1 or bad:
            raise ValueError(
                f"every level's channel count must be a positive multiple of {_GROUPS} "
                f"(GroupNorm groups); hidden_channels={hidden_channels}, "
                f"channel_mult={channel_mult}"
            )
        if codebook_dim != z_channels:
            raise ValueError(
                f"codebook_dim ({codebook_dim}) must equal z_channels ({z_channels}): the "
                "codebook is compared with, and decoded like, the encoder features"
            )
        self.hidden_channels = hidden_channels
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        self.z_channels = z_channels
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.num_channels = num_channels
        self.resolution = resolution
        self.downsample_factor = 2 ** (len(channel_mult) - 1)

        plan = _Plan(hidden_channels, channel_mult, num_res_blocks, z_channels, num_channels)
        self.encoder = _Encoder(plan)
        self.decoder = _Decoder(plan)
        self.quantize = VectorQuantizer(codebook_size, codebook_dim)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> MaskGITVQGAN:
        """Keep the frozen tokenizer in eval mode whatever ``mode`` is asked."""
        return super().train(False)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, e.g. to rebuild the model or log it."""
        return {
            "hidden_channels": self.hidden_channels,
            "channel_mult": list(self.channel_mult),
            "num_res_blocks": self.num_res_blocks,
            "z_channels": self.z_channels,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "num_channels": self.num_channels,
            "resolution": self.resolution,
        }

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
        if images.shape[1] != self.num_channels:
            raise ValueError(
                f"images must have {self.num_channels} channels (RGB in [0, 1]), "
                f"got shape {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        f = self.downsample_factor
        h, w = images.shape[-2:]
        if h % f or w % f or h == 0 or w == 0:
            raise ValueError(
                f"image height and width must be positive multiples of {f} (the tokenizer's "
                f"downsampling factor), got {h}x{w}"
            )

    def encode_features(self, images: Tensor) -> Tensor:
        """Pre-quantisation encoder features.

        Args:
            images: (B, 3, H, W) RGB in [0, 1], no normalisation; H, W divisible by the factor.

        Returns:
            (B, z_channels, H/f, W/f) features, f = ``downsample_factor``.
        """
        self._check_images(images)
        # The codes are training targets: computed in the tokenizer's own dtype, never in a
        # caller's autocast precision (bf16 changes a few percent of them).
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.encoder(images.to(self.encoder.conv_in.weight.dtype))

    def encode(self, images: Tensor) -> Tensor:
        """Tokenise images.

        Args:
            images: (B, 3, H, W) RGB in [0, 1].

        Returns:
            (B, (H/f)*(W/f)) int64 codes, row-major over the code grid.
        """
        return self.quantize(self.encode_features(images))

    def forward(self, images: Tensor) -> Tensor:
        """Same as :meth:`encode`: (B, 3, H, W) images in [0, 1] -> (B, h*w) int64 codes."""
        return self.encode(images)

    def decode(
        self, codes: Tensor, clamp: bool = True, grid: tuple[int, int] | None = None
    ) -> Tensor:
        """Images from a grid of codes.

        The reference decode output is clamped to [0, 1] (the fixture holds exact 0s and 1s);
        ``clamp=False`` returns the raw decoder output.

        Args:
            codes: (B, n) integer codes, row-major over the code grid, in [0, codebook_size).
            clamp: Clamp the output to [0, 1].
            grid: (h, w) code grid with h·w = n; default: square (n must be a square).

        Returns:
            (B, 3, h*f, w*f) images, f = ``downsample_factor``.
        """
        if not isinstance(codes, Tensor) or codes.ndim != 2:
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"codes must be a (B, n) tensor, got {shape}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        b, n = codes.shape
        h, w = grid or (math.isqrt(n),) * 2
        if n == 0 or h * w != n:
            raise ValueError(f"codes: n={n} is not {h}x{w} (pass grid=(h, w) if it is not square)")
        # An out-of-range index is a device-side assert on CUDA; fail clearly instead.
        lo, hi = (int(codes.min()), int(codes.max())) if codes.numel() else (0, 0)
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values in [{lo}, {hi}]"
            )
        z = self.quantize.embedding(codes.long()).reshape(b, h, w, self.codebook_dim)
        images = self.decoder(z.permute(0, 3, 1, 2).contiguous())  # from (B, h, w, D)
        return images.clamp(0.0, 1.0) if clamp else images


def _count(keys: Mapping[str, Tensor], pattern: str) -> int:
    """How many consecutive i = 0, 1, ... have ``pattern.format(i)`` among ``keys``."""
    n = 0
    while pattern.format(n) in keys:
        n += 1
    return n


def infer_vqgan_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """:class:`MaskGITVQGAN`'s arguments read from the tensor shapes (``resolution``, not
    stored, is 16 x 2^(levels - 1): 256 for the released f16 model).

    Raises:
        ValueError: a key needed to read them is absent or has an unexpected shape.
    """
    try:
        hidden, channels = state["encoder.conv_in.weight"].shape[:2]
        levels = _count(state, "encoder.down.{}.block.0.conv1.weight")
        outs = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
        size, dim = state["quantize.embedding.weight"].shape
        z = state["encoder.conv_out.weight"].shape[0]
    except (KeyError, ValueError) as err:  # ValueError: a codebook that is not (size, dim)
        raise ValueError(f"not a MaskGIT-VQGAN state dict: {err}") from None
    if not outs or any(c % hidden for c in outs):
        raise ValueError(f"not a MaskGIT-VQGAN state dict: level channels {outs}, conv_in {hidden}")
    return {
        "hidden_channels": hidden,
        "channel_mult": [c // hidden for c in outs],
        "num_res_blocks": _count(state, "encoder.down.0.block.{}.conv1.weight"),
        "z_channels": z,
        "codebook_size": size,
        "codebook_dim": dim,
        "num_channels": channels,
        "resolution": 16 * 2 ** (levels - 1),
    }


def load_vqgan(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> MaskGITVQGAN:
    """A frozen :class:`MaskGITVQGAN` (eval mode), its configuration read from the shapes.

    ``path``: ``"maskgit-vqgan"`` (TiTok's release, through the Hugging Face cache), or a path
    (never downloaded) of ``maskgit-vqgan-imagenet-f16-256.bin`` or a ``.safetensors`` with
    the same keys. ``dtype`` defaults to float32.

    Raises:
        FileNotFoundError, ValueError: no such file; keys or shapes that do not fit (named).
    """
    if not Path(path).is_file():
        if str(path) not in (TOKENIZER_NAME, TOKENIZER_FILE):
            raise WeightsNotFoundError(
                f"no MaskGIT-VQGAN weights at {path}: a path is never downloaded; pass the "
                f"local {TOKENIZER_FILE}, or {TOKENIZER_NAME!r} to fetch TiTok's release"
            )
        path = hub_file(TOKENIZER_REPO, TOKENIZER_FILE)
    state, _ = read_state_dict(path)
    non_float = sorted(k for k, v in state.items() if not v.is_floating_point())
    if non_float:
        raise UsageError(f"{path}: expected floating-point tensors, got non-float {non_float}")
    try:  # name the file: it is often one of several paths on a command line
        config = infer_vqgan_config(state)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
    # on the meta device: the loaded tensors are the only allocation
    with torch.device("meta"):
        model = MaskGITVQGAN(**config)
    load_strict(model, state, source=str(path), target="the MaskGIT-VQGAN layout", assign=True)
    model.to(device=device, dtype=torch.float32 if dtype is None else dtype)
    model.requires_grad_(False)
    model.eval()
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
