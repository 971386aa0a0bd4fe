"""The trainer's checkpoints: what an exact resume needs, saving it, and restoring it into the
trainer's own model and optimizer (no second model is loaded).

A mixin of :class:`stellar.train.trainer.Trainer`, kept apart so that the training step and
loop read on their own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from stellar.checkpoint.official import from_official
from stellar.train.checkpoint import STATE_NAME, WEIGHTS_NAME, resume_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


class TrainerCheckpoints:
    """Save / resume for the trainer."""

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
        """The saved (epoch, position) means the same data only under the same data settings."""
        saved, now = state["config"], self.cfg.to_dict()
        # The image folder may have moved (another machine); its size is compared instead.
        keys = ["batch_size", "grad_accum", *(f"data.{k}" for k in now["data"])]
        keys = [k for k in keys if k not in ("data.num_workers", "data.root")]
        differ = [
            f"{k} {_dotted(saved, k)!r} -> {_dotted(now, k)!r}"
            for k in keys
            if _dotted(saved, k) != _dotted(now, k)
        ]
        for what, old, new in (
            ("processes", state["world_size"], self.dist.world_size),
            ("images", state["num_images"], len(self.dataset)),
        ):
            if old != new:
                differ.append(f"{what} {old} -> {new}")
        if differ:
            raise ValueError(
                f"{folder} was saved with other data settings ({'; '.join(differ)}): an exact "
                "resume needs the same ones. Restore them, or start a new run from these weights "
                f"with init.checkpoint={folder}"
            )
        if saved["data"]["root"] != now["data"]["root"]:
            logger.warning(
                "data.root changed since %s (%s -> %s): resuming on the assumption that it "
                "holds the same images",
                folder,
                saved["data"]["root"],
                now["data"]["root"],
            )

    def save(self, epoch: int, position: int) -> Path | None:
        """Checkpoint on the main process (every process must call it)."""
        path = None
        weights, optimizer = self._full_states()
        state = self.state(epoch, position, optimizer)  # gathers from every rank
        if self.dist.is_main:
            path = save_checkpoint(
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

    def resume(self) -> tuple[int, int]:
        """Restore ``out/checkpoints/last`` into this trainer; returns (epoch, position)."""
        folder = resume_checkpoint(self.ckpt_dir)
        state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
        self._check_same_data_order(state, folder)
        weights, _, unknown = from_official(load_file(folder / WEIGHTS_NAME))
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(
                self.model,
                self.optimizer,
                model_state_dict=weights,
                optim_state_dict=state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            stray = unknown + unexpected + [k for k in missing if not k.startswith("tokenizer.")]
            if stray:  # only the frozen tokenizer lives outside checkpoints
                raise ValueError(f"{folder} does not match the model: {stray[:10]}")
            self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["cpu_rng"])
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
        elif self.teacher is not None:
            logger.warning(
                "%s has no EMA teacher: the teacher starts from the resumed student weights",
                folder,
            )
            student = self.model.state_dict()  # the teacher shares no tokenizer (make_teacher)
            self.teacher.load_state_dict(
                {k: v for k, v in student.items() if not k.startswith("tokenizer.")}
            )
        self.step = int(state["step"])
        logger.info("resumed from %s at step %d", folder, self.step)
        epoch, position = state["rank_positions"][self.dist.rank]
        return int(epoch), int(position)


def _dotted(config: dict[str, Any], key: str) -> Any:
    """``config["data"]["seed"]`` for ``"data.seed"`` (None where absent)."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config
