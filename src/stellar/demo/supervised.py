"""The supervised reference: the demo's encoder, data and updates, trained with labels.

Defined in docs/CONCEPTS.md; its weights are cached under ``<out>/supervised-reference/``, keyed
by every setting that changes them.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from stellar.checkpoint.io import save_state_dict
from stellar.checkpoint.weights import load_strict, read_state_dict
from stellar.data.scenes import COLOURS, SHAPES
from stellar.demo.training import DemoSettings, demo_trainer
from stellar.eval.linear import pool_features
from stellar.models.stellar import STELLAR
from stellar.outputs import atomic_write
from stellar.train.schedule import cosine_lr
from stellar.train.trainer import Trainer

logger = logging.getLogger(__name__)


def _epochs(trainer: Trainer) -> Iterator[dict]:
    """The trainer's batches, epoch after epoch, in its data order."""
    for epoch in itertools.count():
        trainer.sampler.set_position(epoch, 0)
        yield from trainer.loader


def train_supervised(settings: DemoSettings) -> tuple[STELLAR, bool]:
    """The supervised reference model, and whether it came from the cache."""
    trainer = demo_trainer(settings, "supervised", [])
    cfg, o = trainer.cfg, trainer.cfg.optim
    # Every setting the weights depend on: the budget as resolved, and the recipe overrides.
    key = {
        "seed": cfg.seed,
        "steps": trainer.total_steps,
        "batch_size": cfg.batch_size,
        "overrides": list(settings.overrides),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(settings.out) / "supervised-reference" / f"seed{cfg.seed}-{digest}"
    weights = folder / "model.safetensors"
    if weights.is_file():
        model = copy.deepcopy(trainer.model)
        state, _ = read_state_dict(weights)
        load_strict(model, state, source=str(weights))
        logger.info("supervised reference: cached weights %s", weights)
        return model.eval(), True
    width = trainer.model.config.encoder.hidden_size
    heads = nn.ModuleDict(
        {"shape": nn.Linear(width, len(SHAPES)), "colour": nn.Linear(width, len(COLOURS))}
    )
    trainer.optimizer.add_param_group({"params": list(heads.parameters()), "weight_decay": 0.0})
    # The trainer built its optimiser over trainer.model; train that model, then keep it.
    model = trainer.model.train()
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    total = trainer.total_steps
    every = max(1, total // 10)
    for step, batch in zip(range(total), _epochs(trainer), strict=False):
        for group in trainer.optimizer.param_groups:
            group["lr"] = cosine_lr(step, total, o.lr, o.warmup, o.min_lr)
        tokens = pool_features(model.forward_encode(batch["image"])["sparse"])
        loss = nn.functional.cross_entropy(heads["shape"](tokens), batch["label"])
        loss = loss + nn.functional.cross_entropy(heads["colour"](tokens), batch["colour"])
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_grad:
            nn.utils.clip_grad_norm_(params, o.clip_grad)
        trainer.optimizer.step()
        if (step + 1) % every == 0 or step + 1 == total:
            logger.info("supervised reference: step %d/%d loss %.4f", step + 1, total, loss.item())
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), weights)
    text = json.dumps(key, indent=1)
    atomic_write(folder / "key.json", lambda tmp: tmp.write_text(text + "\n"))
    return model.eval(), False
