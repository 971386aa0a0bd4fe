"""Reconstruction probe (arXiv 2602.01905): a fresh decoder trained on frozen features.

A new :class:`~stellar.models.decoder.ReconstructionDecoder` (the model's decoder width, 6
blocks by default, **pixel** head) learns to rebuild the image from one frozen feature grid
(``lowrank`` for STELLAR, ``dense`` for dense baselines): loss ``10 · MSE(x_hat, image)``
(the pretraining pixel loss), AdamW (lr 1e-4, wd 1e-4) with a per-step cosine decay to 0,
20 epochs. Validation reports PSNR and SSIM (means over images) and, only when their local
weight files are given, LPIPS-VGG and rFID (Inception features of the val images vs their
reconstructions). The VQ target is not implemented: the probe always predicts pixels.

Features and images are computed once and cached in memory (features float32, or float16
with ``fp16``; images uint8), so each epoch costs only the decoder.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from stellar.eval.extract import encode_batch
from stellar.eval.fid import fid_from_features
from stellar.eval.images import EvalImages, decodable_batches
from stellar.eval.metrics import psnr, ssim
from stellar.models.decoder import ReconstructionDecoder

__all__ = [
    "cache_features",
    "fresh_decoder",
    "image_metrics",
    "reconstruct_features",
    "run_recon",
    "save_reconstruction_grid",
    "train_recon_probe",
]

logger = logging.getLogger(__name__)

PIXEL_LOSS_WEIGHT = 10.0
DEFAULT_DEPTH = 6


def _init_weights(module: nn.Module) -> None:
    """STELLAR's init for a fresh decoder: trunc-normal(0.02) weights, zero biases, unit LNs."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def fresh_decoder(
    model: nn.Module, depth: int = DEFAULT_DEPTH, seed: int = 0
) -> ReconstructionDecoder:
    """A newly initialised pixel-head decoder sized for ``model``'s features.

    Args:
        model: STELLAR or a baseline (its ``config.encoder``, ``config.decoder`` and
            ``config.fourier_features`` fix the widths; the patch size fixes the head).
        depth: transformer blocks (6 in the paper).
        seed: seeds the initialisation and the Fourier matrix (global RNG untouched).

    Returns:
        The decoder, in train mode, on the CPU.
    """
    if depth < 1:
        raise ValueError(f"expected a decoder depth >= 1, got {depth}")
    cfg = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = ReconstructionDecoder(
            cfg.encoder.hidden_size,
            cfg.decoder,
            depth,
            "pixel",
            model.patch_size,
            fourier_features=cfg.fourier_features,
            eps=cfg.encoder.layer_norm_eps,
        )
        _init_weights(decoder)
    return decoder.train()


@torch.inference_mode()
def cache_features(
    model: nn.Module,
    dataset: EvalImages,
    key: str,
    batch_size: int = 64,
    num_workers: int = 0,
    fp16: bool = False,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Frozen ``key`` grids and the images they came from, in memory.

    Returns:
        ``features`` (N, n, d) float32 (float16 with ``fp16``) and ``images`` (N, 3, R, R)
        uint8, both on the CPU, for the decodable images.
    """
    feats, images = [], []
    pin = model.device.type == "cuda"
    batches = decodable_batches(dataset, batch_size, num_workers, pin, f"features[{key}]", progress)
    for batch in batches:
        feats.append(encode_batch(model, batch["image"], [key], fp16=fp16)[key])
        images.append(batch["image"].mul(255).round_().to(torch.uint8))
    return torch.cat(feats), torch.cat(images)


def _to_float(images: Tensor, device: torch.device | str) -> Tensor:
    return images.to(device, non_blocking=True).float().div_(255)


@torch.no_grad()
def reconstruct_features(
    decoder: ReconstructionDecoder,
    features: Tensor,
    grid: tuple[int, int],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Decode cached features (N, n, d) -> images (N, 3, H, W) float32 in [0, 1] on the CPU."""
    was_training = decoder.training
    decoder.eval()
    outs = []
    for i in range(0, features.shape[0], batch_size):
        x = features[i : i + batch_size].to(device).float()
        outs.append(decoder.head_output(decoder.forward_features(x, grid), grid).clamp(0, 1).cpu())
    decoder.train(was_training)
    return torch.cat(outs)


def train_recon_probe(
    decoder: ReconstructionDecoder,
    features: Tensor,
    images: Tensor,
    grid: tuple[int, int],
    epochs: int = 20,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    val: tuple[Tensor, Tensor] | None = None,
    eval_every: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``decoder`` (in place) to rebuild ``images`` from frozen ``features``.

    Args:
        decoder: a fresh pixel-head decoder (see :func:`fresh_decoder`).
        features: (N, n, d) frozen feature grids, n = h·w.
        images: (N, 3, h·p, w·p) uint8 targets.
        grid: (h, w).
        epochs, lr, weight_decay, batch_size: AdamW with a per-step cosine decay to 0.
        seed: batch order.
        device: where the decoder trains.
        val: optional ``(features, images)`` for a PSNR every ``eval_every`` epochs.
        eval_every: 0 = no per-epoch validation.
        progress: tqdm bar over epochs.

    Returns:
        One dict per epoch: ``epoch``, ``loss`` (mean weighted loss) and, on validation
        epochs, ``val_psnr`` (dB).
    """
    n = features.shape[0]
    if n == 0 or images.shape[0] != n:
        raise ValueError(
            f"expected as many images as feature grids (> 0), got {n} and {images.shape[0]}"
        )
    if features.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"expected {grid[0] * grid[1]} tokens per grid, got {features.shape[1]}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"expected epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    decoder.to(device).train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    bar = tqdm(range(epochs), desc="reconstruction probe", disable=not progress)
    for epoch in bar:
        order = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x = features[idx].to(device).float()
            target = _to_float(images[idx], device)
            x_hat = decoder.head_output(decoder.forward_features(x, grid), grid)
            loss = PIXEL_LOSS_WEIGHT * F.mse_loss(x_hat, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * idx.numel()
        record = {"epoch": epoch + 1, "loss": (loss_sum / n).item()}
        if val is not None and eval_every > 0 and ((epoch + 1) % eval_every == 0):
            rec = reconstruct_features(decoder, val[0], grid, batch_size, device)
            record["val_psnr"] = psnr(rec, val[1].float() / 255).mean().item()
        history.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "epoch"})
        logger.debug("reconstruction probe %s", record)
    return history


@torch.no_grad()
def image_metrics(
    recons: Tensor,
    targets: Tensor,
    lpips_net: nn.Module | None = None,
    fid_net: nn.Module | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, float | None]:
    """PSNR / SSIM (always), LPIPS and rFID (when their networks are given, else None).

    Args:
        recons, targets: (N, 3, H, W) in [0, 1] (targets may be uint8).

    Returns:
        ``psnr`` (dB, mean over images), ``ssim``, ``lpips`` (mean distance), ``rfid``.
    """
    if targets.dtype == torch.uint8:
        targets = targets.float() / 255
    out: dict[str, float | None] = {
        "psnr": psnr(recons, targets).mean().item(),
        "ssim": ssim(recons, targets).mean().item(),
        "lpips": None,
        "rfid": None,
    }
    if lpips_net is not None:
        dists = [
            lpips_net(recons[i : i + batch_size].to(device), targets[i : i + batch_size].to(device))
            for i in range(0, recons.shape[0], batch_size)
        ]
        out["lpips"] = torch.cat(dists).mean().item()
    if fid_net is not None:
        if recons.shape[0] < 2:
            logger.warning("rFID needs at least 2 validation images; not computed")
        else:
            real = torch.cat(
                [
                    fid_net(targets[i : i + batch_size].to(device)).cpu()
                    for i in range(0, recons.shape[0], batch_size)
                ]
            )
            fake = torch.cat(
                [
                    fid_net(recons[i : i + batch_size].to(device)).cpu()
                    for i in range(0, recons.shape[0], batch_size)
                ]
            )
            out["rfid"] = fid_from_features(real, fake)
    return out


def save_reconstruction_grid(
    inputs: Tensor, recons: Tensor, path: str | Path, max_images: int = 8
) -> Path:
    """Write a PNG: top row the inputs, bottom row their reconstructions.

    Args:
        inputs: (N, 3, H, W) uint8 or [0, 1] float.
        recons: (N, 3, H, W) [0, 1] float.
        path: output file.
        max_images: columns.
    """
    k = min(max_images, inputs.shape[0])
    if inputs.dtype != torch.uint8:
        inputs = inputs.clamp(0, 1).mul(255).round().to(torch.uint8)
    rec = recons[:k].clamp(0, 1).mul(255).round().to(torch.uint8)
    rows = torch.stack([inputs[:k], rec])  # (2, k, 3, H, W)
    _, _, c, h, w = rows.shape
    # rows -> (2H, kW, 3) with a 2-pixel white gutter between tiles
    pad = 2
    padded = F.pad(rows, (0, pad, 0, pad), value=255)
    canvas = padded.permute(0, 3, 1, 4, 2).reshape(2 * (h + pad), k * (w + pad), c)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(canvas.numpy())).save(path)
    return path


def run_recon(
    model: nn.Module,
    train: EvalImages,
    val: EvalImages,
    key: str,
    depth: int = DEFAULT_DEPTH,
    epochs: int = 20,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    fp16: bool = False,
    eval_every: int = 0,
    lpips_net: nn.Module | None = None,
    fid_net: nn.Module | None = None,
    grid_png: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole reconstruction probe for one model.

    Returns:
        ``psnr``, ``ssim``, ``lpips``, ``rfid`` (None when not computed), ``history`` (per
        epoch), ``initial_psnr`` (the untrained decoder's val PSNR), ``num_train``,
        ``num_val`` and ``grid_png`` (path or None).
    """
    device = model.device
    side = train.resolution // model.patch_size
    grid = (side, side)
    tr_x, tr_img = cache_features(model, train, key, batch_size, num_workers, fp16, progress)
    va_x, va_img = cache_features(model, val, key, batch_size, num_workers, fp16, progress)
    decoder = fresh_decoder(model, depth, seed).to(device)
    initial = psnr(
        reconstruct_features(decoder, va_x, grid, batch_size, device), va_img.float() / 255
    )
    history = train_recon_probe(
        decoder,
        tr_x,
        tr_img,
        grid,
        epochs,
        lr,
        weight_decay,
        batch_size,
        seed,
        device,
        val=(va_x, va_img),
        eval_every=eval_every,
        progress=progress,
    )
    recons = reconstruct_features(decoder, va_x, grid, batch_size, device)
    metrics: dict[str, Any] = image_metrics(recons, va_img, lpips_net, fid_net, batch_size, device)
    metrics["initial_psnr"] = initial.mean().item()
    metrics["history"] = history
    metrics["num_train"], metrics["num_val"] = tr_x.shape[0], va_x.shape[0]
    metrics["grid_png"] = None
    if grid_png is not None:
        metrics["grid_png"] = str(save_reconstruction_grid(va_img, recons, grid_png))
    return metrics
