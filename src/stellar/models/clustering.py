"""The online clustering heads: model parameters that turn tokens into cluster logits.

STELLAR has two (``clustering_head`` for the concept tokens, ``cls_cluster_head`` for the CLS
token). They exist only in ``purpose="pretrain"`` models but are part of the released
checkpoints. The Sinkhorn targets and the cross-entropy that train them are pure functions in
:mod:`stellar.losses.clustering`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from stellar.models.init import init_vit_layers_

_NORM_EPS = 1e-12


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
