"""The pretraining loop: read top to bottom in one sitting.

One optimizer step = ``grad_accum`` micro-batches per process. Each micro-batch: canvases ->
batched multi-view augmentation on the device -> masking -> ``StellarObjective`` (one module
call, DDP-wrapped when distributed) -> backward. Randomness of a micro-batch comes from a
generator seeded by (seed, step, micro-batch, rank), and the data order from (seed, epoch), so
a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from stellar.checkpoint.mae import init_encoder_from_mae
from stellar.data.augment import MultiViewAugment
from stellar.data.loader import ResumableSampler, build_loader
from stellar.hub import create_stellar, load_stellar
from stellar.losses.masking import random_masking
from stellar.losses.objective import StellarObjective
from stellar.models.stellar import STELLAR
from stellar.runtime import autocast, autocast_dtype
from stellar.train import checkpoint as ckpt
from stellar.train.config import TrainConfig, check_against_model
from stellar.train.distributed import DistInfo, mean_across_ranks, setup
from stellar.train.ema import make_teacher, update_teacher
from stellar.train.metrics import MetricsLog
from stellar.train.resume import TrainerCheckpoints
from stellar.train.schedule import cosine_lr, ema_momentum

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf."""


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training images; checked before any training work starts."""
    data = cfg.data
    if data.source == "scenes":
        from stellar.data.scenes import ConceptScenes

        return ConceptScenes(size=data.scenes_size, length=data.scenes_length, seed=data.seed)
    if data.source == "folder":
        from stellar.data.folder import validate_image_folder

        if not data.root:
            raise ValueError("data.source=folder needs data.root=/path/to/images")
        return validate_image_folder(data.root, canvas_size=data.canvas_size)
    raise ValueError(f"data.source must be 'scenes' or 'folder', got {data.source!r}")


def build_model(cfg: TrainConfig) -> STELLAR:
    """A ``purpose="pretrain"`` model: a preset, continued from a checkpoint, or MAE-initialised."""
    vq = cfg.vq_model
    if cfg.init.checkpoint:
        model = load_stellar(cfg.init.checkpoint, purpose="pretrain", vq_model=vq)
    else:
        model = create_stellar(cfg.model, purpose="pretrain", vq_model=vq, **cfg.model_overrides)
    if cfg.init.encoder:
        init_encoder_from_mae(model, cfg.init.encoder)
    if model.config.decoder_head == "vq" and cfg.objective.recon and model.tokenizer is None:
        raise ValueError(
            "this model reconstructs MaskGIT-VQGAN codes: pass "
            "vq_model=/path/to/maskgit-vqgan-imagenet-f16-256.bin, or objective.recon=false"
        )
    return model.requires_grad_(True).train()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, and the CLS/position/concept tokens."""
    no_decay_names = ("cls_token", "pos_embed", "sparse_tokens")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(no_decay_names) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Trainer(TrainerCheckpoints):
    """Builds everything from a :class:`TrainConfig` and runs :meth:`train`."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or setup()
        self.device = self.dist.device
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        cfg.validate()  # ranges and combinations, before anything is built or written
        torch.manual_seed(cfg.seed)
        self.dataset = build_dataset(cfg)
        self.model = build_model(cfg).to(self.device)
        self.teacher = make_teacher(self.model) if cfg.ema.enabled else None
        self.objective = StellarObjective(self.model, cfg.objective, self.teacher)
        a = cfg.augment
        # The views the enabled terms need: the pipeline makes exactly these.
        self.plan = cfg.objective.views(a.n_masked, a.n_local)
        self.step_fn = self._wrap(self.objective)
        self.augment = MultiViewAugment(
            a.global_size,
            a.local_size,
            a.n_global,
            a.n_local,
            a.global_scale,
            a.local_scale,
            **a.color,
        )
        check_against_model(cfg, self.model.config)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.optim.weight_decay),
            lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas),
            fused=self.device.type == "cuda",
        )
        # Per-group weight decay as configured: a resume re-applies it over the checkpoint's.
        self._group_decay = [g["weight_decay"] for g in self.optimizer.param_groups]
        per_step = cfg.batch_size * cfg.grad_accum * self.dist.world_size
        self.steps_per_epoch = len(self.dataset) // per_step
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(self.dataset)} images cannot fill one step of {per_step} "
                "(batch_size x grad_accum x processes): lower batch_size or add images"
            )
        self.total_steps = (
            cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        )
        self.loader = build_loader(
            self.dataset,
            cfg.batch_size,
            cfg.data.num_workers,
            seed=cfg.data.seed,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            pin_memory=self.device.type == "cuda",
        )
        self.sampler: ResumableSampler = self.loader.sampler
        self.step = 0
        self.autocast_dtype = self._precision()

    # ------------------------------------------------------------------ set-up
    def _precision(self) -> torch.dtype | None:
        return autocast_dtype(self.cfg.precision, self.device)

    def _wrap(self, objective: StellarObjective) -> nn.Module:
        """The module a step calls: DDP- or FSDP-wrapped when distributed, maybe compiled.

        ``self.ddp`` keeps the DDP wrapper itself: a compiled module is no DDP instance, and
        gradient accumulation needs its ``no_sync``.
        """
        wrapped: nn.Module = objective
        self.ddp: DistributedDataParallel | None = None
        if self.dist.enabled and self.cfg.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in self.model.encoder.blocks:
                fully_shard(block)
            fully_shard(objective)
        elif self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Only an ablation leaves parameters without a gradient; DDP must know which.
            unused = objective.unused_parameters(self.plan)
            wrapped = self.ddp = DistributedDataParallel(
                objective, device_ids=ids, find_unused_parameters=bool(unused)
            )
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces the gradients of the last micro-batch only."""
        if self.ddp is not None and not last:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def generator(self, micro: int) -> torch.Generator:
        """The randomness of one micro-batch, a function of (seed, step, micro, rank)."""
        g = torch.Generator(device=self.device)
        key = ((self.cfg.seed * 1_000_003 + self.step) * 997 + micro) * 65_537 + self.dist.rank
        return g.manual_seed(key % (2**63))

    def make_views(self, batch: dict[str, torch.Tensor], g: torch.Generator) -> dict:
        """Canvases -> the objective's batch: the views of ``self.plan`` and the masks."""
        a, plan = self.cfg.augment, self.plan
        canvas = batch["canvas"].to(self.device, non_blocking=True)
        size = batch["size"].to(self.device, non_blocking=True)
        out = self.augment.make(canvas, size, plan, g)
        if plan.masked:
            grid = a.global_size // self.model.patch_size
            out["keep_idx"] = random_masking(
                canvas.shape[0] * plan.masked,
                grid,
                grid,
                a.mask_ratio,
                a.focal_mode,
                a.focal_prob,
                generator=g,
                device=self.device,
            )
        return out

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns logged scalars."""
        cfg = self.cfg
        lr = cosine_lr(
            self.step, self.total_steps, cfg.optim.lr, cfg.optim.warmup, cfg.optim.min_lr
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(micro_batches):
            views = self.make_views(batch, self.generator(micro))
            last = micro == len(micro_batches) - 1
            with (
                self._grad_sync(last),
                autocast(self.device, self.autocast_dtype),
            ):
                total, terms = self.step_fn(views)
            (total / len(micro_batches)).backward()
            for name, value in {"loss": total.detach(), **terms}.items():
                sums[name] = sums.get(name, 0) + value / len(micro_batches)
        clip = cfg.optim.clip_grad if cfg.optim.clip_grad else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        logged = mean_across_ranks({**sums, "grad_norm": grad_norm})
        if not all(math.isfinite(v) for v in logged.values()):
            self.optimizer.zero_grad(set_to_none=True)
            return {**logged, "lr": lr, "nonfinite": 1.0}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None:
            m = ema_momentum(self.step, self.total_steps, cfg.ema.momentum, cfg.ema.final_momentum)
            update_teacher(self.teacher, self.model, m)
        return {**logged, "lr": lr}

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> dict[str, float]:
        """Run until ``total_steps``; returns the last step's scalars."""
        cfg = self.cfg
        epoch, position = self.resume() if resume else (0, 0)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if self.dist.is_main and not resume and ckpt.latest_checkpoint(self.ckpt_dir) is not None:
            logger.warning(
                "%s already holds a run: this fresh run replaces its checkpoints and metrics "
                "(pass --resume to continue it instead)",
                self.out,
            )
        log = MetricsLog(self.out, cfg.tensorboard, self.step) if self.dist.is_main else None
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            disable=not (self.dist.is_main and cfg.progress),
            dynamic_ncols=True,
        )
        last: dict[str, float] = {}
        images_per_step = cfg.batch_size * cfg.grad_accum * self.dist.world_size
        end = self.total_steps if cfg.stop_at is None else min(self.total_steps, cfg.stop_at)
        first_step = self.step
        try:
            while self.step < end:
                self.sampler.set_position(epoch, position)
                batches = iter(self.loader)
                while self.step < end:
                    micro = [b for _, b in zip(range(cfg.grad_accum), batches, strict=False)]
                    if len(micro) < cfg.grad_accum:
                        break
                    start = time.perf_counter()
                    scalars = self.train_step(micro)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    scalars["images_per_s"] = images_per_step / (time.perf_counter() - start)
                    position += cfg.batch_size * cfg.grad_accum
                    if scalars.pop("nonfinite", 0.0):
                        self._nonfinite(scalars)
                    self.step += 1
                    last = {"step": self.step, "epoch": epoch, **scalars}
                    if log and (self.step % cfg.log_every == 0 or self.step == self.total_steps):
                        log.write(last)
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{scalars['loss']:.3f}", img_s=f"{scalars['images_per_s']:.0f}"
                    )
                    if self.step % cfg.ckpt_every == 0 and self.step < end:
                        self.save(epoch, position)
                if self.step < end:  # the data ran out before the step budget: next epoch
                    epoch, position = epoch + 1, 0
            if self.step > first_step:
                self.save(epoch, position)
            else:  # resumed at or past the end: the last checkpoint already is the result
                logger.info("already at step %d of %d: nothing to train", self.step, end)
        finally:
            bar.close()
            if log:
                log.close()
        return last

    def _nonfinite(self, scalars: dict[str, float]) -> None:
        bad = ", ".join(f"{k}={v:.4g}" for k, v in scalars.items() if not math.isfinite(v))
        message = f"step {self.step}: non-finite values ({bad}); all terms: {scalars}"
        if self.cfg.nonfinite == "skip":
            logger.warning("%s - step skipped (nonfinite=skip)", message)
            return
        good = ckpt.latest_checkpoint(self.ckpt_dir)
        raise TrainingDiverged(
            f"{message}. Stopped; the last good checkpoint is {good or 'none (none saved yet)'}. "
            "Lower optim.lr, or pass nonfinite=skip to skip such steps."
        )
