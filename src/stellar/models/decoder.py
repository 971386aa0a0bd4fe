"""The light reconstruction decoder that turns the low-rank feature map back into an image."""

from __future__ import annotations

from torch import Tensor, nn

from stellar.layers.block import Transformer
from stellar.layers.pos_embed import FourierPositionEncoding
from stellar.models.config import StellarConfig
from stellar.models.init import init_vit_layers_


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
