"""The trainer's checkpoints: what an exact resume needs, saving it, and loading it back.

A mixin of :class:`stellar.train.trainer.Trainer`, kept apart so that the training step and
loop read on their own. It uses the trainer's ``cfg``, ``dist``, ``model``, ``optimizer``,
``teacher``, ``dataset``, ``step``, ``ckpt_dir`` and ``_group_decay``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from stellar.hub import load_stellar
from stellar.train import checkpoint as ckpt

logger = logging.getLogger(__name__)


class TrainerCheckpoints:
    """Save / resume for the trainer (see the module docstring for what it relies on)."""

    @property
    def sharded(self) -> bool:
        """Whether parameters are FSDP shards (state must be gathered / scattered)."""
        return self.dist.enabled and self.cfg.strategy == "fsdp"

    def _full_states(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Model and optimizer state; under FSDP gathered in full (a collective)."""
        if not self.sharded:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.model, self.optimizer, options=options)

    def state(self, epoch: int, position: int, optimizer: dict[str, Any]) -> dict[str, Any]:
        """Everything beyond the weights that an exact resume needs."""
        state = {
            "step": self.step,
            "epoch": epoch,
            "position": position,
            "rank_positions": self._rank_positions(epoch, position),
            "optimizer": optimizer,
            "cpu_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "num_images": len(self.dataset),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def _rank_positions(self, epoch: int, position: int) -> list[list[int]]:
        """Every rank's (epoch, position): they differ once a rank skipped a batch of only
        unreadable files that the others did not have (called on every rank)."""
        mine = torch.tensor([epoch, position], dtype=torch.int64, device=self.device)
        if not self.dist.enabled:
            return [mine.tolist()]
        every = [torch.empty_like(mine) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(every, mine)
        return [t.tolist() for t in every]

    def _check_same_data_order(self, state: dict[str, Any], folder: Path) -> None:
        """The saved (epoch, position) only means the same data under the same data settings."""
        saved, now = state.get("config", {}), self.cfg.to_dict()
        # The image folder may have moved (another machine); its size is compared instead.
        keys = ["batch_size", "grad_accum"] + [
            f"data.{k}" for k in now["data"] if k not in ("num_workers", "root")
        ]
        differ = [
            f"{key} {_dotted(saved, key)!r} -> {_dotted(now, key)!r}"
            for key in keys
            if saved and _dotted(saved, key) != _dotted(now, key)
        ]
        for what, old, new in (
            ("processes", state.get("world_size"), self.dist.world_size),
            ("images", state.get("num_images"), len(self.dataset)),
        ):
            if old is not None and old != new:
                differ.append(f"{what} {old} -> {new}")
        if saved and _dotted(saved, "data.root") != now["data"]["root"]:
            logger.warning(
                "data.root changed since %s (%s -> %s): resuming on the assumption that it "
                "holds the same images",
                folder,
                _dotted(saved, "data.root"),
                now["data"]["root"],
            )
        if differ:
            raise ValueError(
                f"{folder} was saved with other data settings ({'; '.join(differ)}): an exact "
                "resume needs the same ones. Restore them, or start a new run from these weights "
                f"with init.checkpoint={folder}"
            )

    def save(self, epoch: int, position: int) -> Path | None:
        """Checkpoint on the main process (every process must call it)."""
        path = None
        weights, optimizer = self._full_states()
        state = self.state(epoch, position, optimizer)  # gathers from every rank
        if self.dist.is_main:
            path = ckpt.save_checkpoint(
                self.ckpt_dir,
                self.step,
                self.model,
                state,
                self.cfg.keep_checkpoints,
                weights,
            )
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def resume(self, folder: Path | None = None) -> tuple[int, int]:
        """Load the latest (or given) checkpoint; returns (epoch, position in epoch).

        Without a complete ``out/checkpoints/last`` this raises a ValueError (a silent fresh
        start would write over the run it was meant to continue).
        """
        folder = folder or ckpt.resume_checkpoint(self.ckpt_dir)
        state = ckpt.load_trainer_state(folder)
        self._check_same_data_order(state, folder)
        weights = load_stellar(folder, purpose="pretrain").state_dict()
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            options = StateDictOptions(full_state_dict=True)
            set_state_dict(
                self.model,
                self.optimizer,
                model_state_dict=weights,
                optim_state_dict=state["optimizer"],
                options=options,
            )
        else:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            stray = unexpected + [k for k in missing if not k.startswith("tokenizer.")]
            if stray:  # only the frozen tokenizer lives outside checkpoints
                raise ValueError(f"{folder} does not match the model: {stray[:10]}")
            self.optimizer.load_state_dict(state["optimizer"])
        self._reapply_optim_config()
        torch.set_rng_state(state["cpu_rng"])
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
        elif self.teacher is not None:
            logger.warning(
                "%s has no EMA teacher (saved with ema.enabled=false): the teacher starts from "
                "the resumed student weights",
                folder,
            )
            student = self.model.state_dict()  # the teacher shares no tokenizer (make_teacher)
            self.teacher.load_state_dict(
                {k: v for k, v in student.items() if not k.startswith("tokenizer.")}
            )
        self.step = int(state["step"])
        logger.info("resumed from %s at step %d", folder, self.step)
        per_rank = state.get("rank_positions")  # older checkpoints: rank 0's for every rank
        if per_rank and len(per_rank) == self.dist.world_size:
            epoch, position = per_rank[self.dist.rank]
            return int(epoch), int(position)
        return int(state["epoch"]), int(state["position"])

    def _reapply_optim_config(self) -> None:
        """The config's weight decay and betas win over the checkpoint's (as lr does each step)."""
        betas = tuple(self.cfg.optim.betas)
        changed = {}
        for group, decay in zip(self.optimizer.param_groups, self._group_decay, strict=True):
            for name, want in (("weight_decay", decay), ("betas", betas)):
                saved = tuple(group[name]) if name == "betas" else group[name]
                if saved != want:
                    changed.setdefault(name, (saved, want))
                    group[name] = want
        for name, (saved, want) in changed.items():
            logger.info(
                "optim.%s: %s in the checkpoint, %s in the config (used)", name, saved, want
            )


def _dotted(config: dict[str, Any], key: str) -> Any:
    """``config["data"]["seed"]`` for ``"data.seed"`` (None where absent)."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config
