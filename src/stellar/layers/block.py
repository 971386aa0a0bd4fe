"""Pre-LayerNorm transformer block (HF ``ViTLayer`` semantics)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from stellar.layers.attention import Attention


class Block(nn.Module):
    """``x = x + Attn(LN1(x)); x = x + MLP(LN2(x))`` (LayerNorm ``eps`` 1e-12, as in HF ViT)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, eps: float = 1e-12, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        # Linear -> exact GELU -> Linear, named as the checkpoint mapping expects
        self.mlp = nn.Sequential(
            OrderedDict(fc1=nn.Linear(dim, mlp_dim), act=nn.GELU(), fc2=nn.Linear(mlp_dim, dim))
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of :class:`Block` followed by a final LayerNorm on every token."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        eps: float = 1e-12,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_dim, eps=eps, qkv_bias=qkv_bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
