"""Is the demo's shape linear probe limited by the probe or by the features?

Loads a trained demo checkpoint and rebuilds the demo's random initialisation (the same
``cpu-demo`` trainer and seed, before step 1), encodes the demo's evaluation scenes, and fits
the shape linear probe on each feature key (mean ``sparse``, ``cls``, mean ``dense``) with
several probe budgets: the demo's (30 epochs, lr 1e-3) and longer / larger-lr ones that fit
the 2,000 training scenes further. Prints one JSON line per (model, key, budget).

    stellar demo --out runs/demo
    python benchmarks/demo_probe_sweep.py runs/demo/train-stellar/checkpoints/last
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from stellar import load_stellar
from stellar.data.scenes import SHAPES
from stellar.demo.evaluate import encode_scenes, eval_scenes
from stellar.demo.training import DemoSettings, demo_trainer
from stellar.eval.linear import (
    SCHEDULE,
    accuracy_topk,
    pool_features,
    train_linear_probe,
)
from stellar.eval.probe import predict

BUDGETS = ((30, 1e-3), (300, 1e-3), (100, 1e-2), (300, 1e-2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a demo checkpoint folder (config.json + weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-train", type=int, default=2000)
    parser.add_argument("--eval-val", type=int, default=500)
    parser.add_argument(
        "--scratch", default="/tmp/stellar-probe-sweep", help="the unused trainer's out dir"
    )
    args = parser.parse_args()

    settings = DemoSettings(
        out=args.scratch,
        seed=args.seed,
        eval_train=args.eval_train,
        eval_val=args.eval_val,
        progress=False,
    )
    train, val = eval_scenes(settings)
    models = {
        # The weights the demo's trainer starts from (its "random init" row); nothing is trained.
        "random init": demo_trainer(settings, "stellar", []).model,
        "STELLAR": load_stellar(args.checkpoint, purpose="reconstruct"),
    }
    for name, model in models.items():
        model.eval()
        ft, fv = encode_scenes(model, train), encode_scenes(model, val)
        features = {
            "sparse": (pool_features(ft["sparse"]), pool_features(fv["sparse"])),
            "cls": (ft["cls"][:, 0], fv["cls"][:, 0]),
            "dense": (pool_features(ft["dense"]), pool_features(fv["dense"])),
        }
        for key, (x_train, x_val) in features.items():
            for epochs, lr in BUDGETS:
                probe, val_metrics = train_linear_probe(
                    x_train, ft["label"], x_val, fv["label"], len(SHAPES),
                    replace(SCHEDULE, epochs=epochs, lr=lr, seed=args.seed), progress=False,
                )  # fmt: skip
                fit = accuracy_topk(predict(probe, x_train, 1024, "cpu"), ft["label"], (1,))["top1"]
                row = {"model": name, "key": key, "epochs": epochs, "lr": lr}
                row |= {"train_top1": round(fit, 4), "val_top1": round(val_metrics["top1"], 4)}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
