"""How fast can a model learn the largest-object shape *with labels*? (a reference)

Trains a classifier on concept scenes with plain cross-entropy, on fresh scenes every step,
and prints validation top-1 every ``--every`` steps as JSON lines. It bounds what any
self-supervised run of the same size and budget can be expected to show on the demo's shape
linear probe (chance: 1 / 8).

``--arch vit`` is the ``stellar-tiny`` encoder (``--patch-size`` changes its patch) + a
linear head on the mean of its concept tokens; ``--arch vit-conv-stem`` is the same with its
linear patch embedding replaced by a small conv stem (Xiao et al. 2021, "Early convolutions
help transformers see better"); ``--arch torch-vit`` is an independent ViT of the same size
built from ``torch.nn.TransformerEncoder`` (the control that rules out a bug in our encoder);
``--arch cnn`` is a four-stage conv net of similar cost, the inductive-bias control: it shows
the task itself is learnable in the budget. ``--warmup-cosine`` swaps the constant learning
rate for a 10 % linear warmup and cosine decay, with weight decay 0.05 and gradient clipping
at norm 1 (the usual ViT recipe).

Each row also counts the classes the model predicts on the validation scenes: a model that
predicts one class scores the majority-class rate, printed first, and has learnt nothing.

    python benchmarks/shape_supervised_reference.py --steps 480 --max-objects 4
    python benchmarks/shape_supervised_reference.py --steps 4800 --max-objects 1 --every 600
    python benchmarks/shape_supervised_reference.py --steps 480 --max-objects 1 --arch cnn
    python benchmarks/shape_supervised_reference.py --steps 1920 --arch vit-conv-stem --every 480
    python benchmarks/shape_supervised_reference.py --steps 480 --arch torch-vit --warmup-cosine
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from stellar import create_stellar
from stellar.data.scenes import SHAPES, ConceptScenes
from stellar.eval.linear import pool_features
from stellar.models.registry import get_config


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


class TorchViTClassifier(nn.Module):
    """A pre-norm ViT from ``torch.nn`` with the demo encoder's size, on the mean patch token."""

    def __init__(self, patch_size: int, image_size: int = 64) -> None:
        super().__init__()
        cfg = get_config("stellar-tiny").encoder
        width = cfg.hidden_size
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (image_size // patch_size) ** 2, width))
        block = nn.TransformerEncoderLayer(
            width,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        depth = cfg.num_hidden_layers
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, len(SHAPES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed((images - 0.5) / 0.25).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens + self.pos_embed)).mean(1))


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


def make_optimizer(
    net: nn.Module, lr: float, steps: int, warmup_cosine: bool
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW at a constant ``lr``, or with 10 % warmup, cosine decay and weight decay 0.05."""
    if not warmup_cosine:
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))
        return min(1.0, (step + 1) / warmup) * cosine

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", choices=("vit", "vit-conv-stem", "torch-vit", "cnn"), default="vit"
    )
    parser.add_argument("--patch-size", type=int, default=8, help="ViT patch (64 px scenes)")
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("--every", type=int, default=120)
    parser.add_argument("--warmup-cosine", action="store_true", help="the usual ViT schedule")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.arch == "cnn":
        net = conv_classifier()
    elif args.arch == "torch-vit":
        net = TorchViTClassifier(args.patch_size)
    else:
        net = ViTClassifier(args.patch_size, conv_stem=args.arch == "vit-conv-stem")
    optimizer, schedule = make_optimizer(net, args.lr, args.steps, args.warmup_cosine)
    train = ConceptScenes(
        size=64, length=args.steps * args.batch, seed=5, max_objects=args.max_objects
    )
    val = ConceptScenes(size=64, length=500, seed=0, split="val", max_objects=args.max_objects)
    val_batch = next(iter(DataLoader(val, batch_size=len(val))))
    majority = torch.bincount(val_batch["label"], minlength=len(SHAPES)).max() / len(val)
    print(json.dumps({"majority_class_top1": round(float(majority), 4)}), flush=True)
    start = time.perf_counter()
    for step, batch in enumerate(DataLoader(train, batch_size=args.batch), start=1):
        net.train()
        loss = nn.functional.cross_entropy(net(batch["image"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        if args.warmup_cosine:
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.every == 0 or step == args.steps:
            net.eval()
            with torch.no_grad():
                pred = net(val_batch["image"]).argmax(1)
            accuracy = float((pred == val_batch["label"]).float().mean())
            row = {"step": step, "train_loss": round(loss.item(), 4), "val_top1": accuracy}
            row["classes_predicted"] = int(pred.unique().numel())
            print(json.dumps({**row, "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        if step == args.steps:
            break


if __name__ == "__main__":
    main()
