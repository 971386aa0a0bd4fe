"""Online clustering heads and their Sinkhorn-target cross-entropy (SPEC §1.5, §2.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stellar.losses.sinkhorn import sinkhorn_knopp

__all__ = ["OnlineClustering", "clustering_targets", "cross_entropy_soft"]

_NORM_EPS = 1e-12


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no per-device query
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


class _Predictor(nn.Module):
    """Linear -> exact GELU -> Linear; kept as ``layers`` for the checkpoint key layout."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OnlineClustering(nn.Module):
    """Predictor MLP, L2 normalisation, then bias-free prototypes giving fp32 cluster logits.

    State-dict keys follow the official checkpoints: ``predictor.layers.{0,2}.{weight,bias}``
    and ``layer.weight`` (K, proto_dim). Prototypes are initialised N(0, 1); the predictor
    keeps PyTorch's default Linear initialisation.

    Precision: the predictor runs in the ambient precision (autocast, or the parameters'
    dtype); its output is cast to fp32, normalised, and the prototype layer is evaluated with
    autocast disabled on the fp32 features and an fp32 view of the weight (``weight.float()``,
    which is differentiable, so bf16 parameters still receive gradients).

    Args:
        in_dim: Token width d.
        out_dim: Number of clusters K.
        hidden_dim: Predictor hidden width.
        proto_dim: Prototype (normalised feature) width.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, proto_dim: int = 256
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, proto_dim) < 1:
            raise ValueError(
                "OnlineClustering expects positive in_dim, out_dim, hidden_dim, proto_dim, got "
                f"{in_dim}, {out_dim}, {hidden_dim}, {proto_dim}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.predictor = _Predictor(in_dim, hidden_dim, proto_dim)
        self.layer = nn.Linear(proto_dim, out_dim, bias=False)
        nn.init.normal_(self.layer.weight, mean=0.0, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster logits of tokens.

        Args:
            x: (..., in_dim) tokens.

        Returns:
            (..., out_dim) fp32 logits.
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"OnlineClustering expects (..., {self.in_dim}), got {tuple(x.shape)}")
        first = self.predictor.layers[0].weight
        if not _autocast_enabled(x.device.type) and x.dtype != first.dtype:
            x = x.to(first.dtype)
        z = self.predictor(x)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1, eps=_NORM_EPS)
            return F.linear(z, self.layer.weight.float())


@torch.no_grad()
def clustering_targets(
    logits: torch.Tensor, sk_temp: float = 0.06, n_iterations: int = 3
) -> torch.Tensor:
    """Detached Sinkhorn-Knopp targets of cluster logits.

    Batch dims are flattened into rows, ``sinkhorn_knopp(logits / sk_temp)`` is applied
    (distributed-aware), and the shape restored.

    Args:
        logits: (..., K) cluster logits.
        sk_temp: Sinkhorn temperature, > 0.
        n_iterations: Sinkhorn rounds, >= 1.

    Returns:
        (..., K) fp32 targets; each row sums to 1.
    """
    if logits.ndim < 1:
        raise ValueError("clustering_targets expects logits of shape (..., K)")
    if sk_temp <= 0:
        raise ValueError(f"sk_temp must be > 0, got {sk_temp}")
    flat = logits.detach().float().reshape(-1, logits.shape[-1])
    return sinkhorn_knopp(flat / sk_temp, n_iterations=n_iterations).reshape(logits.shape)


def cross_entropy_soft(
    logits: torch.Tensor, targets: torch.Tensor, temp: float = 0.12
) -> torch.Tensor:
    """Soft-target cross-entropy, averaged over every row.

    ``mean over rows of -sum_K targets * log_softmax(logits / temp)``; all leading dims count
    as rows (matches ``cluster.loss``/``cls_cluster.loss``). fp32 with autocast off; gradients
    flow into both arguments (pass detached targets).

    Args:
        logits: (..., K) logits.
        targets: (..., K) probabilities, same shape as ``logits``.
        temp: Softmax temperature, > 0.

    Returns:
        Scalar fp32 loss.
    """
    if logits.shape != targets.shape or logits.ndim < 1:
        raise ValueError(
            "cross_entropy_soft expects logits and targets of the same shape (..., K), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if temp <= 0:
        raise ValueError(f"temp must be > 0, got {temp}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = torch.log_softmax(logits.float() / temp, dim=-1)
        return -(targets.float() * log_p).sum(dim=-1).mean()
