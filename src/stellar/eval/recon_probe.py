"""Reconstruction probe (arXiv 2602.01905): a fresh decoder trained on frozen features;
``stellar eval recon``.

A new :class:`~stellar.models.networks.ReconstructionDecoder` (the model's decoder width, 6
blocks by default, **pixel** head: no VQ target) learns to rebuild the image from one frozen
feature grid (``lowrank`` for STELLAR, ``dense`` for dense baselines) with the pretraining pixel
loss ``10 · MSE(x_hat, image)``. Validation reports PSNR and SSIM (means over images) and, only
when their local weight files are given, LPIPS-VGG and rFID.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stellar.checkpoint.weights import WeightsNotFoundError
from stellar.data.folder import EvalImages
from stellar.errors import UsageError, positive_int
from stellar.eval.common import (
    KEY,
    MODEL,
    add_common,
    add_keys,
    check_folder,
    format_table,
    load_entries,
    metric,
)
from stellar.eval.encoder import Encoder, extract_features
from stellar.eval.fid import fid_from_features
from stellar.eval.probe import ProbeSchedule, fit_probe, predict, seeded
from stellar.models.networks import ReconstructionDecoder
from stellar.outputs import atomic_write

logger = logging.getLogger(__name__)

PSNR_MAX = 100.0  # dB, the PSNR of identical images
PIXEL_LOSS_WEIGHT = 10.0
SCHEDULE = ProbeSchedule(epochs=20, lr=1e-4, weight_decay=1e-4, batch_size=64)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """(B,) PSNR in dB of (B, C, H, W) images in [0, 1], float32 (float64 for float64 input),
    capped at :data:`PSNR_MAX` (identical images): an infinite value would make a whole
    dataset's mean infinite."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    mse = (x.to(dtype) - y.to(dtype)).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_MAX / 10)))


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """(B,) SSIM of (B, C, H, W) images in [0, 1], H, W >= 11, float32 (float64 for float64
    input): Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
    population covariance, averaged over the valid region (window inside the image) and the
    channels, as scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    b, c, h, w = x.shape
    x, y = x.to(dtype).reshape(b * c, 1, h, w), y.to(dtype).reshape(b * c, 1, h, w)
    r = torch.arange(11, dtype=dtype, device=x.device) - 5
    g = torch.exp(-0.5 * (r / 1.5) ** 2)
    g = g / g.sum()
    # the five moments through one separable valid convolution
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(b * c * 5, 1, h, w)
    moments = F.conv2d(F.conv2d(moments, g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))
    ux, uy, uxx, uyy, uxy = moments.reshape(b * c, 5, h - 10, w - 10).unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, -1).mean(dim=1)


def fresh_decoder(model: Encoder, depth: int, seed: int = 0) -> ReconstructionDecoder:
    """A newly initialised pixel-head decoder sized by ``model.config`` for its features,
    ``seed`` seeding the initialisation (global RNG untouched)."""
    config = model.config.replace(num_decoder_layers=depth, decoder_head="pixel")

    def build() -> ReconstructionDecoder:
        decoder = ReconstructionDecoder(config)
        # the decoder initialises its own layers; the pixel head's transposed conv, left at
        # PyTorch's default there, gets the same truncated normal here
        nn.init.trunc_normal_(decoder.head.weight, std=0.02)
        nn.init.zeros_(decoder.head.bias)
        return decoder

    return seeded(build, seed, "cpu").train()


def train_recon_probe(
    decoder: ReconstructionDecoder,
    features: Tensor,
    images: Tensor,
    grid: tuple[int, int],
    schedule: ProbeSchedule = SCHEDULE,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train a :func:`fresh_decoder` in place to rebuild (N, 3, h·p, w·p) uint8 ``images``
    from (N, n, d) frozen feature grids, n = h·w, ``grid`` = (h, w): the :func:`fit_probe`
    record."""
    n = features.shape[0]
    decoder.to(device)

    def loss_of(idx: Tensor) -> tuple[Tensor, int]:
        x = features[idx].to(device).float()
        x_hat = decoder(x, grid)["x_hat"]
        target = images[idx].to(device, non_blocking=True).float().div_(255)
        return PIXEL_LOSS_WEIGHT * F.mse_loss(x_hat, target), idx.numel()

    return fit_probe(
        decoder, schedule, schedule.index_batches(n), loss_of, device, "reconstruction probe",
        progress,
    )  # fmt: skip


@torch.no_grad()
def image_metrics(
    recons: Tensor,
    targets: Tensor,
    lpips_net: nn.Module | None = None,
    fid_net: nn.Module | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, float | None]:
    """``psnr`` (dB) and ``ssim`` (means over images), ``lpips`` (mean distance) and ``rfid`` (None
    without their networks) of (N, 3, H, W) ``recons`` in [0, 1] against uint8 ``targets``."""
    targets = targets.float() / 255
    out: dict[str, float | None] = {
        "psnr": psnr(recons, targets).mean().item(),
        "ssim": ssim(recons, targets).mean().item(),
        "lpips": None,
        "rfid": None,
    }
    if lpips_net is not None:  # the pairs batched as one (N, 2, 3, H, W) input
        pairs = torch.stack([recons, targets], dim=1)
        dists = predict(lpips_net, pairs, batch_size, device, lambda x: lpips_net(x[:, 0], x[:, 1]))
        out["lpips"] = dists.mean().item()
    if fid_net is not None and recons.shape[0] > 1:  # a covariance needs two images
        real, fake = (predict(fid_net, x, batch_size, device) for x in (targets, recons))
        out["rfid"] = fid_from_features(real, fake)
    return out


# ---------------------------------------------------------------------------- stellar eval recon
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_keys(p, ("lowrank", "dense"))
    p.add_argument("--train", default=None, help="training folder")
    p.add_argument("--val", default=None, help="validation folder")
    SCHEDULE.add_arguments(p, None)  # the probe's batches are --batch-size
    p.add_argument(
        "--decoder-depth", type=positive_int, default=6, help="the fresh decoder's blocks"
    )
    p.add_argument("--lpips-vgg", default=None, help="torchvision vgg16 state dict (local)")
    p.add_argument("--lpips-weights", default=None, help="lpips v0.1 vgg.pth (local)")
    p.add_argument("--fid-weights", default=None, help="pt_inception-2015-12-05 .pth (local)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One row per model: PSNR, SSIM, LPIPS, rFID of a fresh decoder on frozen features."""
    from stellar.eval.fid import load_fid_inception
    from stellar.eval.lpips import load_lpips
    from stellar.runtime import pick_device
    from stellar.viz.maps import compose_panel

    train_dir = check_folder(args.train, "--train").root
    val_dir = check_folder(args.val, "--val").root
    if (args.lpips_vgg is None) != (args.lpips_weights is None):
        raise UsageError("LPIPS needs both --lpips-vgg and --lpips-weights")
    for flag in ("--lpips-vgg", "--lpips-weights", "--fid-weights"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None and not os.path.isfile(path):
            raise WeightsNotFoundError(f"{flag}: expected a weights file, got {path!r} (no file)")
    device = pick_device(args.device)
    unavailable = {}
    lpips_net = fid_net = None
    if args.lpips_vgg is not None:
        lpips_net = load_lpips(args.lpips_vgg, args.lpips_weights, device)
    else:
        unavailable["lpips"] = "no weights: pass --lpips-vgg and --lpips-weights (local files)"
    if args.fid_weights is not None:
        fid_net = load_fid_inception(args.fid_weights, device)
    else:
        unavailable["rfid"] = "no weights: pass --fid-weights (pt_inception-2015-12-05 .pth)"
    for name, why in unavailable.items():
        logger.warning("%s not computed: %s", name, why)
    entries = load_entries(args)
    for e in entries[1:]:  # the baseline's probe decoder gets STELLAR's decoder size
        e.model.config.decoder = entries[0].model.config.decoder
    schedule, batch = ProbeSchedule.from_args(args, args.batch_size), args.batch_size
    read = {"num_workers": args.num_workers, "progress": not args.no_progress, "keep_images": True}
    rows = []
    for i, e in enumerate(entries):
        res, on = e.resolution, e.model.device
        grid = (res // e.model.patch_size,) * 2
        tr, va = (  # features and uint8 images in memory: an epoch costs only the decoder
            extract_features(e.model, EvalImages(folder, res), [e.key], batch, **read)
            for folder in (train_dir, val_dir)
        )
        decoder = fresh_decoder(e.model, args.decoder_depth, args.seed)
        history = train_recon_probe(
            decoder, tr[e.key], tr["images"], grid, schedule, on, read["progress"]
        )
        # decoded batch by batch, (N, 3, H, W) in [0, 1] on the CPU
        recons = predict(
            decoder, va[e.key], batch, on, lambda x, d=decoder, g=grid: d(x, g)["x_hat"].clamp(0, 1)
        )
        metrics = image_metrics(recons, va["images"], lpips_net, fid_net, batch, on)
        if fid_net is not None and metrics["rfid"] is None:
            unavailable["rfid"] = "needs at least 2 validation images"
        panel = compose_panel([list(va["images"][:8]), list(recons[:8])], pad=2)
        png = args.out_dir / f"reconstructions_{i}_{e.kind}.png"
        atomic_write(png, lambda tmp, panel=panel: panel.save(tmp, format="PNG"))
        counts = {"num_train": len(tr["paths"]), "num_val": len(va["paths"])}
        rows.append(e.row(**metrics, history=history, **counts, grid_png=str(png)))
    return {"rows": rows, "unavailable": unavailable}


def tables(result: dict[str, Any]) -> list[str]:
    """The printed result, and why a metric is missing."""
    cols = [
        MODEL,
        KEY,
        ("PSNR dB", lambda r: metric(".2f")(r["psnr"])),
        ("SSIM", lambda r: metric(".4f")(r["ssim"])),
        ("LPIPS", lambda r: metric(".4f")(r["lpips"])),
        ("rFID", lambda r: metric(".2f")(r["rfid"])),
    ]
    notes = [f"{k}: {v}" for k, v in result.get("unavailable", {}).items()]
    return [format_table(cols, result["rows"]), *notes]
