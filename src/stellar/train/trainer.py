"""The pretraining loop: read top to bottom in one sitting.

Randomness of a micro-batch comes from a generator seeded by (seed, step, micro-batch, rank),
and the data order from (seed, epoch), so a resumed run replays exactly what an uninterrupted
one would have done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from torch.utils.data import Dataset

from stellar.checkpoint.mae import init_encoder_from_mae
from stellar.data.augment import ViewPlan
from stellar.data.loader import build_loader
from stellar.errors import UsageError
from stellar.hub import create_stellar, inspect_model, load_stellar
from stellar.losses.objective import PHASE, ObjectiveConfig, StellarObjective
from stellar.models.stellar import STELLAR
from stellar.outputs import atomic_write, check_fresh, remove
from stellar.progress import progress_bar
from stellar.runtime import DistInfo, precision_choice, setup
from stellar.train.checkpoint import TrainerCheckpoints, latest_checkpoint
from stellar.train.config import RUN_CONFIG, TrainConfig, check_against_model
from stellar.train.ema import ema_momentum, make_teacher, update_teacher
from stellar.train.metrics import MetricsLog, mean_across_ranks
from stellar.train.stopping import StopRequest, TrainingStopped

logger = logging.getLogger(__name__)

RUN_FILES = (RUN_CONFIG, "metrics.jsonl", "checkpoints", "tensorboard")  # what a run writes


def cosine_lr(step: int, total: int, base: float, warmup: float, floor: float) -> float:
    """Linear warm-up over ``warmup`` (fraction of ``total``) then cosine decay to ``floor``."""
    warmup_steps = int(round(warmup * total))
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training images; checked before any training work starts."""
    data = cfg.data
    if data.source == "scenes":
        from stellar.data.scenes import ConceptScenes

        return ConceptScenes(size=data.scenes_size, length=data.scenes_length, seed=data.seed)
    from stellar.data.folder import validate_image_folder

    if not data.root:  # presets leave it to the command line; ImageFolder says what is wrong
        raise UsageError("data.source=folder needs data.root=, a folder of images")
    return validate_image_folder(data.root, canvas_size=data.canvas_size)


def leaves_parameters_idle(objective: ObjectiveConfig, plan: ViewPlan) -> bool:
    """Whether a step leaves parameters without a gradient (DDP must then look for them): the
    decoder without reconstruction, a clustering head that no enabled term with its views reads."""
    o = objective
    both_heads_aligned = o.set_align and plan.masked and o.cls_align and (plan.masked or plan.local)
    return not (o.recon and (o.clustering or both_heads_aligned))


def build_model(cfg: TrainConfig, resume_from: Path | None = None) -> STELLAR:
    """A ``purpose="pretrain"`` model: a preset, continued from a checkpoint, or MAE-initialised;
    to resume, the architecture of ``resume_from`` alone (it restores every weight)."""
    vq = cfg.vq_model
    if resume_from is not None:  # the checkpoint's config holds model_overrides too
        return create_stellar(inspect_model(resume_from).config, purpose="pretrain", vq_model=vq)
    if cfg.init.checkpoint:
        model = load_stellar(cfg.init.checkpoint, purpose="pretrain", vq_model=vq)
        logger.info("the architecture is init.checkpoint's (model=%s is not used)", cfg.model)
    else:
        model = create_stellar(cfg.model, purpose="pretrain", vq_model=vq, **cfg.model_overrides)
    if cfg.init.encoder:
        init_encoder_from_mae(model, cfg.init.encoder)
    return model  # in train mode, gradients on but the tokenizer's (the hub's purpose rule)


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


class TrainingDiverged(UsageError, RuntimeError):
    """The loss or gradient became NaN/inf (a usage error: the message names the settings to
    change, and the command line prints it as one line)."""


class Trainer(TrainerCheckpoints):
    """Builds everything from a :class:`TrainConfig` (from
    :func:`~stellar.train.config.load_config`, which checks it) and runs :meth:`train`."""

    def __init__(
        self, cfg: TrainConfig, dist: DistInfo | None = None, resume: bool = False
    ) -> None:
        self.cfg = cfg
        self.dist = dist or setup()
        self.device = self.dist.device
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.run_id = secrets.token_hex(8)  # names this run in its checkpoints (not torch's RNG)
        self.resume_from = self.checkpoint_to_resume() if resume else None
        torch.manual_seed(cfg.seed)
        self.dataset = build_dataset(cfg)
        self.images_per_step = cfg.batch_size * cfg.grad_accum * self.dist.world_size
        self.steps_per_epoch = len(self.dataset) // self.images_per_step
        if self.steps_per_epoch < 1:  # before the model is built
            raise UsageError(
                f"{len(self.dataset)} images cannot fill one step of {self.images_per_step} "
                "(batch_size x grad_accum x processes): lower batch_size or add images"
            )
        self.model = build_model(cfg, self.resume_from).to(self.device)
        self.model.encoder.checkpoint_blocks = cfg.activation_checkpointing
        self.teacher = make_teacher(self.model) if cfg.ema.enabled else None
        self.objective = StellarObjective(self.model, cfg.objective, self.teacher)
        # The views the enabled terms need: the pipeline (cfg.augment) makes exactly these.
        self.plan = cfg.objective.views(cfg.augment.n_masked, cfg.augment.n_local)
        self.step_fn = self._wrap(self.objective)
        if cfg.init.checkpoint:  # a preset's architecture was checked with the config
            check_against_model(cfg, self.model.config)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.optim.weight_decay),
            lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas),
            # Fused kernels where PyTorch has them for this device (CUDA; CPU unless sharded).
            fused=self.device.type == "cuda" or (self.device.type == "cpu" and not self.sharded),
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
        self.sampler = self.loader.sampler  # the data order (the demo replays it)
        self.step = 0
        self.autocast_dtype, why = precision_choice(cfg.precision, self.device)
        if self.dist.is_main:
            logger.info("training step precision: %s", why)

    # ------------------------------------------------------------------ set-up

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
            idle = leaves_parameters_idle(self.cfg.objective, self.plan)
            wrapped = self.ddp = DistributedDataParallel(
                objective, device_ids=ids, find_unused_parameters=idle
            )
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # ------------------------------------------------------------------ one step
    def generator(self, micro: int) -> torch.Generator:
        """The randomness of one micro-batch, a function of (seed, step, micro, rank)."""
        g = torch.Generator(device=self.device)
        key = ((self.cfg.seed * 1_000_003 + self.step) * 997 + micro) * 65_537 + self.dist.rank
        return g.manual_seed(key % (2**63))

    def make_views(self, batch: dict[str, torch.Tensor], g: torch.Generator) -> dict:
        """Canvases -> the objective's batch: the views of ``self.plan`` and the masks."""
        canvas = batch["canvas"].to(self.device, non_blocking=True)
        size = batch["size"].to(self.device, non_blocking=True)
        views = self.cfg.augment.make(canvas, size, self.plan, g)
        return self.cfg.augment.mask(views, self.model.patch_size, g)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches.

        Returns the step's scalars (``loss``, the terms, ``grad_norm``, ``lr``, ``nonfinite``)
        as detached 0-dim device tensors of this rank: nothing here waits for the device.
        A step whose loss or gradient norm is NaN/inf is applied under ``nonfinite=stop`` (the
        loop stops at its next read); under ``nonfinite=skip`` it changes nothing, a decision
        that reads one flag per step.
        """
        cfg = self.cfg
        lr = cosine_lr(
            self.step, self.total_steps, cfg.optim.lr, cfg.optim.warmup, cfg.optim.min_lr
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, torch.Tensor] = {}
        dtype = self.autocast_dtype  # None: fp32
        for micro, batch in enumerate(micro_batches):
            with record_function(PHASE + "views and masking"):
                views = self.make_views(batch, self.generator(micro))
            # DDP all-reduces the gradients of the last micro-batch only
            last = micro == len(micro_batches) - 1
            sync = (
                self.ddp.no_sync()
                if self.ddp is not None and not last
                else contextlib.nullcontext()
            )
            with sync, torch.autocast(self.device.type, dtype, enabled=dtype is not None):
                total, terms = self.step_fn(views)
            with record_function(PHASE + "backward"):
                (total / len(micro_batches)).backward()
            for name, value in {"loss": total.detach(), **terms}.items():
                sums[name] = sums.get(name, 0) + value / len(micro_batches)
        clip = cfg.optim.clip_grad if cfg.optim.clip_grad else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        scalars = {**sums, "grad_norm": grad_norm.detach()}
        bad = ~torch.isfinite(torch.stack([v.float() for v in scalars.values()])).all()
        scalars["nonfinite"] = bad.float()
        scalars["lr"] = torch.tensor(lr, device=self.device)
        if cfg.nonfinite == "skip":  # a read of the device: whether any rank has a NaN/inf
            flag = bad.float().reshape(1)
            if self.dist.enabled:
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item():
                self.optimizer.zero_grad(set_to_none=True)
                return scalars
        with record_function(PHASE + "optimizer"):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None:
            m = ema_momentum(self.step, self.total_steps, cfg.ema.momentum, cfg.ema.final_momentum)
            update_teacher(self.teacher, self.model, m)
        return scalars

    # ------------------------------------------------------------------ the loop
    def train(self, overwrite: bool = False) -> dict[str, float]:
        """Run until ``total_steps`` (resumed from the latest checkpoint if the trainer was built
        to resume); returns the last step's scalars.

        A fresh run refuses an ``out`` folder that holds another run unless ``overwrite``
        (which deletes that run's files).
        """
        cfg = self.cfg
        if self.resume_from is not None:
            epoch, position = self.resume(self.resume_from)
        else:
            resumable = latest_checkpoint(self.ckpt_dir) is not None
            hint = "pass --resume (resume=True) to continue it, " if resumable else ""
            old = check_fresh(self.out, RUN_FILES, overwrite, "a run", hint)  # on every rank
            start = cfg.init.checkpoint and Path(os.path.realpath(cfg.init.checkpoint))
            if start and any(start.is_relative_to(os.path.realpath(path)) for path in old):
                raise UsageError(
                    f"--overwrite would delete init.checkpoint={cfg.init.checkpoint}, the weights "
                    f"this run starts from: copy them out of {self.out} first"
                )
            if self.dist.is_main:
                remove(old)
            if self.dist.enabled:
                torch.distributed.barrier()
            epoch, position = 0, 0
        end = self.total_steps if cfg.stop_at is None else min(self.total_steps, cfg.stop_at)
        if self.dist.is_main and self.step < end:  # atomic_write makes the folder
            text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            atomic_write(self.out / RUN_CONFIG, lambda tmp: tmp.write_text(text))
        log = MetricsLog(self.out, cfg.tensorboard, self.step) if self.dist.is_main else None
        bar = progress_bar(
            total=self.total_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            disable=not (self.dist.is_main and cfg.progress),
            dynamic_ncols=True,
        )
        last: dict[str, float] = {}
        first_step = self.step
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []  # read at the logging steps
        since = time.perf_counter()
        stopped = 0  # the signal that stopped the run, agreed by every rank
        with StopRequest() as stop:
            try:
                while self.step < end:
                    self.sampler.set_position(epoch, position)
                    start, batches = position, iter(self.loader)
                    while self.step < end:
                        micro = [b for _, b in zip(range(cfg.grad_accum), batches, strict=False)]
                        if len(micro) < cfg.grad_accum:
                            break
                        # numbered from 1 like metrics rows and checkpoints: after this step
                        pending.append((self.step + 1, self.train_step(micro)))
                        # batches of only unreadable files were skipped but still read
                        position = start + self.loader.drawn * cfg.batch_size
                        self.step += 1
                        # Under torchrun the ranks agree at the logging steps, where the loop
                        # waits for the device anyway; one process checks every step.
                        check = not self.dist.enabled or self.step % cfg.log_every == 0
                        if check and (stopped := stop.agreed(self.device, self.dist.enabled)):
                            end = self.step  # log, save and leave as at the last step
                        logged = self.step % cfg.log_every == 0 or self.step == self.total_steps
                        saving = self.step % cfg.ckpt_every == 0 and self.step < end
                        if not (logged or saving or self.step == end):
                            bar.update(1)
                            continue
                        # The one read of the interval: checks every step of it, then logs the last.
                        rows = self._checked(mean_across_ranks(pending))
                        pending.clear()
                        now = time.perf_counter()
                        rate = len(rows) * self.images_per_step / max(now - since, 1e-9)
                        since = now
                        last = {"step": self.step, "epoch": epoch, **rows[-1], "images_per_s": rate}
                        if (skipped := self.skipped_images()) is not None:
                            last["skipped_images"] = skipped
                        if log and logged:
                            log.write(last)
                        bar.set_postfix(loss=f"{last['loss']:.3f}", img_s=f"{rate:.0f}")
                        bar.update(1)  # after the postfix: a logged bar line shows this step's loss
                        if saving:
                            self.save(epoch, position)
                    if self.step < end:  # the data ran out before the step budget: next epoch
                        epoch, position = epoch + 1, 0
                if self.step > first_step:
                    self.save(epoch, position)
                else:  # resumed at or past the end: the last checkpoint already is the result
                    logger.info("already at step %d of %d: nothing to train", self.step, end)
                if last.get("skipped_images"):
                    logger.warning(
                        "%d unreadable image files were skipped (each named above)",
                        last["skipped_images"],
                    )
            finally:
                bar.close()
                if log:
                    log.close()
        if stopped:
            raise TrainingStopped(
                f"{signal.Signals(stopped).name}: stopped at step {self.step}, checkpoint "
                f"{latest_checkpoint(self.ckpt_dir)}; continue on as many processes with "
                f"`stellar train out={self.out} --resume` (resume=True)",
                stopped,
            )
        return last

    def skipped_images(self) -> int | None:
        """Unreadable files found so far by this run's processes, all ranks together (a
        resumed run counts afresh; None: the data has no files)."""
        mask = getattr(self.dataset, "broken_mask", None)
        if mask is None:
            return None
        if self.dist.enabled:  # a file may be found broken by several ranks: take the union
            mask = mask.to(self.device, copy=True)
            torch.distributed.all_reduce(mask, op=torch.distributed.ReduceOp.MAX)
        return int(mask.sum())

    def _checked(self, rows: list[tuple[int, dict[str, float]]]) -> list[dict[str, float]]:
        """The rows without their ``nonfinite`` flag; a flagged step warns (skip) or stops."""
        for step, scalars in rows:
            if not scalars.pop("nonfinite", 0.0):
                continue
            bad = ", ".join(f"{k}={v:.4g}" for k, v in scalars.items() if not math.isfinite(v))
            message = f"step {step}: non-finite values ({bad}); all terms: {scalars}"
            if self.cfg.nonfinite == "skip":
                logger.warning("%s - step skipped (nonfinite=skip)", message)
                continue
            good = latest_checkpoint(self.ckpt_dir) or "none (none saved yet)"
            raise TrainingDiverged(
                f"{message}. Stopped; the last good checkpoint is {good}. "
                "Lower optim.lr, or pass nonfinite=skip to skip such steps."
            )
        return [scalars for _, scalars in rows]
