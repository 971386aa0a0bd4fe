"""How fast can a model learn the largest-object shape *with labels*? (a reference)

Trains a classifier on concept scenes with plain cross-entropy, on fresh scenes every step,
and prints validation top-1 every ``--every`` steps as JSON lines. It bounds what any
self-supervised run of the same size and budget can be expected to show on the demo's shape
linear probe (chance: 1 / 8).

``--arch vit`` is the ``stellar-tiny`` encoder (``--patch-size`` changes its patch) + a
linear head on the mean of its concept tokens; ``--arch vit-conv-stem`` is the same with its
linear patch embedding replaced by a small conv stem (Xiao et al. 2021, "Early convolutions
help transformers see better"); ``--arch cnn`` is a four-stage conv net of similar cost, the
inductive-bias control: it shows the task itself is learnable in the budget.

    python benchmarks/shape_supervised_reference.py --steps 480 --max-objects 4
    python benchmarks/shape_supervised_reference.py --steps 4800 --max-objects 1 --every 600
    python benchmarks/shape_supervised_reference.py --steps 480 --max-objects 1 --arch cnn
    python benchmarks/shape_supervised_reference.py --steps 1920 --arch vit-conv-stem --every 480
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from stellar import create_stellar
from stellar.data.scenes import SHAPES, ConceptScenes
from stellar.eval.linear import pool_features


class ViTClassifier(nn.Module):
    """The demo's encoder with a linear head on its pooled concept tokens."""

    def __init__(self, patch_size: int, conv_stem: bool = False) -> None:
        super().__init__()
        self.model = create_stellar("stellar-tiny", encoder={"patch_size": patch_size})
        self.model.requires_grad_(True)
        if conv_stem:
            cfg = self.model.config.encoder
            self.model.encoder.patch_embed = conv_patch_stem(cfg.patch_size, cfg.hidden_size)
        self.head = nn.Linear(self.model.config.encoder.hidden_size, len(SHAPES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(pool_features(self.model.forward_encode(images)["sparse"]))


def conv_patch_stem(patch_size: int, width: int) -> nn.Module:
    """Stride-2 3x3 conv-BN-ReLU stages down to the patch grid, then a 1x1 conv to ``width``.

    A drop-in for the encoder's ``patch_embed`` (same output grid and width) when
    ``patch_size`` is a power of two; stage widths 24, 48, 96, ...
    """
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"conv stem needs a power-of-two patch size, got {patch_size}")
    widths = [3] + [24 * 2**i for i in range(patch_size.bit_length() - 1)]
    stages = [
        nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        for i, o in zip(widths[:-1], widths[1:], strict=True)
    ]
    return nn.Sequential(*stages, nn.Conv2d(widths[-1], width, 1))


def conv_classifier() -> nn.Module:
    """Four conv-BN-ReLU-maxpool stages, global average pooling, a linear head."""
    widths = (3, 32, 64, 96, 96)
    stages = [
        nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
        for i, o in zip(widths[:-1], widths[1:], strict=True)
    ]
    return nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, len(SHAPES)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("vit", "vit-conv-stem", "cnn"), default="vit")
    parser.add_argument("--patch-size", type=int, default=8, help="ViT patch (64 px scenes)")
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("--every", type=int, default=120)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.arch == "cnn":
        net = conv_classifier()
    else:
        net = ViTClassifier(args.patch_size, conv_stem=args.arch == "vit-conv-stem")
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr)
    train = ConceptScenes(
        size=64, length=args.steps * args.batch, seed=5, max_objects=args.max_objects
    )
    val = ConceptScenes(size=64, length=500, seed=0, split="val", max_objects=args.max_objects)
    val_batch = next(iter(DataLoader(val, batch_size=len(val))))
    start = time.perf_counter()
    for step, batch in enumerate(DataLoader(train, batch_size=args.batch), start=1):
        net.train()
        loss = nn.functional.cross_entropy(net(batch["image"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            net.eval()
            with torch.no_grad():
                pred = net(val_batch["image"]).argmax(1)
            accuracy = float((pred == val_batch["label"]).float().mean())
            row = {"step": step, "train_loss": round(loss.item(), 4), "val_top1": accuracy}
            print(json.dumps({**row, "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        if step == args.steps:
            break


if __name__ == "__main__":
    main()
