"""The supervised reference: the demo's encoder, data and updates, trained with labels
(docs/CONCEPTS.md)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import torch
from torch import nn

from stellar.data.scenes import COLOURS, SHAPES
from stellar.demo.training import DemoSettings, demo_trainer
from stellar.eval.linear import pool_features
from stellar.models.stellar import STELLAR
from stellar.train.trainer import Trainer, cosine_lr

logger = logging.getLogger(__name__)


def _epochs(trainer: Trainer) -> Iterator[dict]:
    """The trainer's batches, epoch after epoch, in its data order."""
    for epoch in itertools.count():
        trainer.sampler.set_position(epoch, 0)
        yield from trainer.loader


def train_supervised(settings: DemoSettings) -> STELLAR:
    """The supervised reference model, trained from the weights STELLAR starts from."""
    trainer = demo_trainer(settings, "supervised", [])
    o = trainer.cfg.optim
    width = trainer.model.config.encoder.hidden_size
    torch.manual_seed(settings.seed)  # the heads' init, whatever the set-up drew before
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
    return model.eval()
