"""How fast can the demo's ViT learn the largest-object shape *with labels*? (a reference)

Trains the ``stellar-tiny`` encoder + a linear head on pooled concept tokens with plain
cross-entropy on concept scenes, with the demo's batch size, and prints validation accuracy
every ``--every`` steps as JSON lines. It bounds what any self-supervised run of the same
size and budget can be expected to show on the shape linear probe.

    python benchmarks/shape_supervised_reference.py --steps 480 --max-objects 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from stellar import create_stellar
from stellar.data.scenes import SHAPES, ConceptScenes
from stellar.eval.linear import pool_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("--every", type=int, default=120)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_stellar("stellar-tiny").requires_grad_(True).train()
    head = torch.nn.Linear(model.config.encoder.hidden_size, len(SHAPES))
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    train = ConceptScenes(
        size=64, length=args.steps * args.batch, seed=5, max_objects=args.max_objects
    )
    val = ConceptScenes(size=64, length=500, seed=0, split="val", max_objects=args.max_objects)
    val_batch = next(iter(DataLoader(val, batch_size=len(val))))
    start = time.perf_counter()
    for step, batch in enumerate(DataLoader(train, batch_size=args.batch), start=1):
        logits = head(pool_features(model.forward_encode(batch["image"])["sparse"]))
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                out = model.forward_encode(val_batch["image"])
                pred = head(pool_features(out["sparse"])).argmax(1)
            accuracy = float((pred == val_batch["label"]).float().mean())
            print(
                json.dumps(
                    {
                        "step": step,
                        "train_loss": round(loss.item(), 4),
                        "val_top1": round(accuracy, 4),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                ),
                flush=True,
            )
        if step == args.steps:
            break


if __name__ == "__main__":
    main()
