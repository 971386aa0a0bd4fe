"""Linear probe on cached, frozen features (the paper's evaluation protocols).

Probe = LayerNorm(d) -> Linear(d, classes), trained with AdamW (lr 1e-3, wd 1e-4, 30 epochs).
The paper names no schedule; we use a per-step cosine decay from ``lr`` to 0 without warm-up.
Features are cached, so the paper's RandomResizedCrop/flip augmentation is the caller's business
(e.g. cache several augmented views); this module trains on whatever tensors it is given.
Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class LinearProbe(nn.Module):
    """LayerNorm(dim) followed by Linear(dim, num_classes)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if dim < 1 or num_classes < 1:
            raise ValueError(f"expected dim >= 1 and num_classes >= 1, got {dim}, {num_classes}")
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, C) logits."""
        return self.head(self.norm(x))


def pool_features(x: torch.Tensor) -> torch.Tensor:
    """Mean over tokens.

    Args:
        x: (N, T, D) token features, or (N, D) already-pooled features (returned as is).

    Returns:
        (N, D).
    """
    if x.dim() == 3:
        return x.mean(dim=1)
    if x.dim() == 2:
        return x
    raise ValueError(f"expected features of shape (N, T, D) or (N, D), got {tuple(x.shape)}")


def accuracy_topk(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Fraction of samples whose label is among the ``k`` highest scores.

    Args:
        logits: (N, C) class scores.
        labels: (N,) integer labels.
        ks: k values; each is clamped to C (so ``top5`` is 1.0 when C <= 5).

    Returns:
        ``{"top{k}": fraction in [0, 1]}`` for each k.
    """
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("expected at least one sample, got N = 0")
    if not ks or min(ks) < 1:
        raise ValueError(f"expected positive k values, got {ks}")
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == labels.to(top.device).long().unsqueeze(1)
    return {f"top{k}": hit[:, : min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def predict_logits(
    probe: nn.Module, x: torch.Tensor, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits of ``probe`` on (N, D) features, in batches; returns (N, C) on CPU."""
    was_training = probe.training
    probe.eval()
    outs = [
        probe(x[i : i + batch_size].to(device, torch.float32)).float().cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    probe.train(was_training)
    return torch.cat(outs)


def _check_xy(x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"expected {name}_x of shape (N, D) got {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"expected {name}_y of shape ({x.shape[0]},), got {tuple(y.shape)}")
    if y.is_floating_point():
        raise ValueError(f"expected integer {name}_y, got dtype {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"expected {name}_y in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]"
        )


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor | None,
    val_y: torch.Tensor | None,
    num_classes: int,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[LinearProbe, dict[str, float]]:
    """Train a :class:`LinearProbe` on cached features and evaluate it.

    Deterministic for a given seed and device: the probe initialisation and the shuffling use
    their own RNG and leave the global RNG untouched.

    Args:
        train_x: (N, D) or (N, T, D) train features (token axis mean-pooled); may stay on CPU,
            batches are moved to ``device``.
        train_y: (N,) integer labels.
        val_x: (M, D) or (M, T, D) validation features, or None to skip validation.
        val_y: (M,) labels, or None.
        num_classes: C.
        epochs, lr, weight_decay, batch_size: AdamW with per-step cosine decay to 0.
        seed: seeds the probe init and the batch order.
        device: where the probe trains.
        progress: show a tqdm bar over epochs.

    Returns:
        ``(probe, {"top1", "top5", "train_top1"})``; val keys are NaN when no val set is given.
        ``train_top1`` is the final probe's accuracy on the train set (eval mode).
    """
    train_x = pool_features(train_x)
    _check_xy(train_x, train_y, num_classes, "train")
    if (val_x is None) != (val_y is None):
        raise ValueError("expected val_x and val_y both given or both None")
    if val_x is not None and val_y is not None:
        val_x = pool_features(val_x)
        _check_xy(val_x, val_y, num_classes, "val")
        if val_x.shape[1] != train_x.shape[1]:
            raise ValueError(f"expected val dim {train_x.shape[1]}, got {val_x.shape[1]}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"expected epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    n = train_x.shape[0]
    if n == 0:
        raise ValueError("expected a non-empty training set")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(train_x.shape[1], num_classes)
    probe = probe.to(device)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    train_y_long = train_y.long()

    probe.train()
    bar = tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False)
    for epoch in bar:
        order = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            xb = train_x[idx].to(device, torch.float32)
            yb = train_y_long[idx].to(device)
            loss = F.cross_entropy(probe(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * idx.numel()
        mean_loss = (loss_sum / n).item()
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        logger.debug("linear probe epoch %d/%d loss %.4f", epoch + 1, epochs, mean_loss)

    metrics = {"top1": float("nan"), "top5": float("nan")}
    if val_x is not None and val_y is not None and val_x.shape[0] > 0:
        metrics.update(accuracy_topk(predict_logits(probe, val_x, device=device), val_y))
    metrics["train_top1"] = accuracy_topk(
        predict_logits(probe, train_x, device=device), train_y, (1,)
    )["top1"]
    logger.info(
        "linear probe: val top1 %.4f top5 %.4f, train top1 %.4f",
        metrics["top1"],
        metrics["top5"],
        metrics["train_top1"],
    )
    return probe, metrics
