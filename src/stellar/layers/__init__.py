"""Building blocks: attention, MLP, transformer blocks and position encodings."""

from stellar.layers.attention import Attention
from stellar.layers.block import Block, Transformer
from stellar.layers.mlp import Mlp
from stellar.layers.pos_embed import FourierPositionEncoding, resize_patch_pos_embed

__all__ = [
    "Attention",
    "Block",
    "FourierPositionEncoding",
    "Mlp",
    "Transformer",
    "resize_patch_pos_embed",
]
