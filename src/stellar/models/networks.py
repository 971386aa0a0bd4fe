"""The networks a STELLAR model is built of: the ViT encoder, the light reconstruction decoder
that turns the low-rank feature map back into an image, and the online-clustering heads
(``purpose="pretrain"`` only, but part of the released checkpoints; the Sinkhorn targets and
the cross-entropy that train them are in :mod:`stellar.losses.objective`)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stellar.layers.block import Transformer
from stellar.layers.pos_embed import FourierPositionEncoding, resize_patch_pos_embed
from stellar.models.config import EncoderConfig, StellarConfig
from stellar.models.init import INIT_STD, init_vit_layers_

_NORM_EPS = 1e-12


class ViTEncoder(Transformer):
    """A standard pre-LayerNorm ViT (HF ``ViTModel`` semantics) that also carries extra tokens.

    Extra tokens (STELLAR's concept queries) are appended after the CLS and patch tokens and
    get no position embedding; the final LayerNorm applies to every output token.
    With ``checkpoint_blocks`` set, each block's activations are recomputed in the backward
    pass instead of kept (activation checkpointing; only while gradients are recorded).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            eps=cfg.layer_norm_eps,
            qkv_bias=cfg.qkv_bias,
        )
        self.patch_size = cfg.patch_size
        d = cfg.hidden_size
        self.patch_embed = nn.Conv2d(cfg.num_channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid_size**2, d))
        self.checkpoint_blocks = False
        init_vit_layers_(self)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)

    def patch_tokens(self, pixels: Tensor) -> Tensor:
        """Embedded patches with their position embeddings, (B, 3, H, W) -> (B, h*w, D)."""
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        return x + resize_patch_pos_embed(self.pos_embed[:, 1:], grid)

    def forward_features(self, pixels: Tensor, extra_tokens: Tensor | None = None) -> Tensor:
        """Encode ``[CLS, patches, extra]``: (B, 3, H, W) -> (B, 1 + h*w + r, D)."""
        patches = self.patch_tokens(pixels)
        return self.run(patches, extra_tokens)

    def run(self, patches: Tensor, extra_tokens: Tensor | None = None) -> Tensor:
        """Blocks + final norm over ``[CLS, patches, extra]`` given embedded patches (B, n, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        parts = [cls.to(patches.dtype), patches]
        if extra_tokens is not None:
            parts.append(extra_tokens.to(patches.dtype))
        x = torch.cat(parts, dim=1)
        if not (self.checkpoint_blocks and torch.is_grad_enabled()):
            return super().forward(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return self.norm(x)


class ReconstructionDecoder(Transformer):
    """``Linear(d, 512)`` + random Fourier positions -> ViT blocks -> LayerNorm -> head: the
    ``"pixel"`` head a ConvTranspose2d to RGB (kernel and stride the patch size), the ``"vq"``
    head logits over the tokenizer's codebook.
    """

    def __init__(self, config: StellarConfig) -> None:
        cfg, enc = config.decoder, config.encoder
        super().__init__(
            cfg.hidden_size,
            config.num_decoder_layers,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            eps=enc.layer_norm_eps,
        )
        self.head_type = config.decoder_head
        self.proj = nn.Linear(enc.hidden_size, cfg.hidden_size)
        self.fourier = FourierPositionEncoding(cfg.hidden_size // 2)
        if self.head_type == "pixel":
            p = enc.patch_size
            self.head = nn.ConvTranspose2d(cfg.hidden_size, 3, p, stride=p)
        else:
            self.head = nn.Linear(cfg.hidden_size, config.vq_codebook_size)
        init_vit_layers_(self)

    def forward(self, lowrank: Tensor, grid: tuple[int, int]) -> dict[str, Tensor]:
        """:meth:`STELLAR.decode <stellar.models.stellar.STELLAR.decode>` without its checks."""
        features = super().forward(self.proj(lowrank) + self.fourier(grid).to(lowrank.dtype))
        if self.head_type == "vq":
            return {"decoder_output": features, "logits": self.head(features)}
        b, _, c = features.shape
        x_hat = self.head(features.transpose(1, 2).reshape(b, c, *grid))
        return {"decoder_output": features, "x_hat": x_hat}


class OnlineClustering(nn.Module):
    """Predictor MLP, L2 normalisation, then bias-free prototypes giving fp32 cluster logits.

    State-dict keys follow the official checkpoints: ``predictor.layers.{0,2}.{weight,bias}``
    and ``layer.weight`` (K, proto_dim).

    Precision: the predictor runs in the ambient precision (autocast, or the parameters'
    dtype); its output is cast to fp32, normalised, and the prototype layer is evaluated with
    autocast disabled on the fp32 features and an fp32 view of the weight (``weight.float()``,
    which is differentiable, so bf16 parameters still receive gradients).
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, proto_dim: int = 256
    ) -> None:
        super().__init__()
        # Linear -> exact GELU -> Linear, under ``layers`` as the checkpoint keys have it
        layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, proto_dim)
        )
        self.predictor = nn.Sequential(OrderedDict(layers=layers))
        self.layer = nn.Linear(proto_dim, out_dim, bias=False)
        init_vit_layers_(self.predictor)
        nn.init.normal_(self.layer.weight, mean=0.0, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster logits (..., K) in fp32 of tokens (..., d)."""
        first = self.predictor.layers[0].weight
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != first.dtype:
            x = x.to(first.dtype)
        z = self.predictor(x)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1, eps=_NORM_EPS)
            return F.linear(z, self.layer.weight.float())
