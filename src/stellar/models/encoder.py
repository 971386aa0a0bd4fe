"""The ViT encoder: patch embedding, CLS token, learned positions, pre-LN blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stellar.layers.block import Transformer
from stellar.layers.pos_embed import resize_patch_pos_embed
from stellar.models.config import EncoderConfig
from stellar.models.init import INIT_STD, init_vit_layers_


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
