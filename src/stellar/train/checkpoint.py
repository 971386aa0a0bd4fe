"""Training checkpoints: weights in the official layout plus optimizer/step/RNG state, and
the trainer's save / exact resume (into its own model and optimizer: no second model load).

Each save writes a fresh ``step-XXXXXXXX/`` folder (every file atomically), then repoints the
``last`` symlink with an atomic rename; a crash at any moment leaves the previous ``last``
intact. ``checkpoints/last`` is itself a model directory that ``load_stellar`` reads.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from stellar.checkpoint.io import WEIGHTS_NAME, save_pretrained
from stellar.checkpoint.official import from_official
from stellar.checkpoint.weights import read_header, read_pickle, read_state_dict
from stellar.errors import UsageError
from stellar.models.stellar import STELLAR
from stellar.outputs import atomic_write, fsync_dir
from stellar.train.config import resume_changes

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
LAST = "last"
# "<run id>-<step>", in the weights' metadata and in the trainer state: binds the two files
CHECKPOINT_ID = "stellar_checkpoint"


def save_checkpoint(
    root: Path,
    step: int,
    model: STELLAR,
    state: dict[str, Any],
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``root/step-XXXXXXXX`` (model + trainer state) and point ``root/last`` at it.

    ``weights`` replaces ``model.state_dict()`` (a full state gathered from FSDP shards);
    ``state[CHECKPOINT_ID]`` is written in the weights' metadata too.
    """
    folder = root / f"step-{step:08d}"
    previous = latest_checkpoint(root)
    try:
        save_pretrained(model, folder, weights, metadata={CHECKPOINT_ID: state[CHECKPOINT_ID]})
        atomic_write(folder / STATE_NAME, lambda tmp: torch.save(state, tmp))
    except UsageError as err:  # atomic_write names the file and why: `last` is unchanged
        if folder.is_dir() and folder != previous:
            shutil.rmtree(folder, ignore_errors=True)  # no half-written step folder stays
        intact = f"the previous checkpoint {previous} is intact" if previous else "no earlier one"
        raise UsageError(f"{err}; {intact}") from err
    link_tmp = root / f".{LAST}.tmp"
    link_tmp.unlink(missing_ok=True)  # a link a killed save left (unlink does not follow it)
    os.symlink(folder.name, link_tmp)
    os.replace(link_tmp, root / LAST)
    fsync_dir(root)  # `last` must durably point at the new folder before older ones go
    _prune(root, keep)
    return folder


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``root/last`` points at, if it holds a complete checkpoint."""
    last = root / LAST
    if (last / STATE_NAME).is_file() and (last / WEIGHTS_NAME).is_file():
        return last.resolve()
    return None


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-" + "[0-9]" * 8) if p.is_dir())  # ours, no copy
    current = (root / LAST).resolve()
    for old in steps[: max(0, len(steps) - keep)]:
        if old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)


class TrainerCheckpoints:
    """Save / resume, a mixin of :class:`~stellar.train.trainer.Trainer` (kept apart so that
    the step and the loop read on their own)."""

    @property
    def sharded(self) -> bool:
        """Whether parameters are FSDP shards (state must be gathered / scattered)."""
        return self.dist.enabled and self.cfg.strategy == "fsdp"

    def _check_same_run(self, state: dict[str, Any], folder: Path) -> None:
        """The state belongs to these weights, was trained with these settings (but the
        resumable ones), and its (epoch, position) means the same data now."""
        weights, own = folder / WEIGHTS_NAME, read_header(folder / WEIGHTS_NAME)[1]
        if own.get(CHECKPOINT_ID) != state[CHECKPOINT_ID]:
            raise UsageError(
                f"{folder / STATE_NAME} (checkpoint {state[CHECKPOINT_ID]}) was not saved "
                f"with {weights} (checkpoint {own.get(CHECKPOINT_ID)}): put back the state saved "
                "beside these weights, or start a new run from them with "
                f"init.checkpoint={folder}"
            )
        trained = f"the settings {folder} was trained with"
        for change in resume_changes(state["config"], self.cfg, trained):
            logger.warning("resuming %s with a changed setting: %s", self.out, change)
        fix = f"or start a new run from these weights with init.checkpoint={folder}"
        if (saved_by := len(state["rank_positions"])) != self.dist.world_size:
            raise UsageError(
                f"{folder} was saved by {saved_by} processes, this run has "
                f"{self.dist.world_size}: an exact resume replays each one's data; run it with "
                f"{saved_by}, {fix}"
            )
        images = getattr(self.dataset, "files_id", None)
        if state["num_images"] != len(self.dataset) or state["images"] != images:
            then, now = state["num_images"], len(self.dataset)
            change = f"{then} images then, {now} now" if then != now else "other names or sizes"
            raise UsageError(
                f"the image folder changed since {folder} was saved ({change}): an exact "
                f"resume replays the checkpoint's data order; restore the folder's images, {fix}"
            )

    def save(self, epoch: int, position: int) -> None:
        """Checkpoint the weights and everything else an exact resume needs, written by the main
        process (every process must call it: it gathers from every rank)."""
        if self.sharded:  # gathered in full, a collective
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights, optimizer = get_state_dict(self.model, self.optimizer, options=options)
        else:
            weights, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        # Every rank's (epoch, position), in order: they differ once a rank skipped a batch of
        # only unreadable files that the others did not have.
        mine = torch.tensor([epoch, position], dtype=torch.int64, device=self.device)
        every = [mine]
        if self.dist.enabled:
            every = [torch.empty_like(mine) for _ in range(self.dist.world_size)]
            torch.distributed.all_gather(every, mine)
        state = {
            "step": self.step,
            "rank_positions": [t.tolist() for t in every],
            "optimizer": optimizer,
            "cpu_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
            "num_images": len(self.dataset),
            "images": getattr(self.dataset, "files_id", None),  # None: concept scenes
            CHECKPOINT_ID: f"{self.run_id}-{self.step}",
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.dist.is_main:
            keep = self.cfg.keep_checkpoints
            save_checkpoint(self.ckpt_dir, self.step, self.model, state, keep, weights)
        if self.dist.enabled:
            torch.distributed.barrier()

    def checkpoint_to_resume(self) -> Path:
        """``out/checkpoints/last``, refused before any work when missing or incomplete."""
        if (folder := latest_checkpoint(self.ckpt_dir)) is None:
            raise UsageError(
                f"--resume needs a complete checkpoint ({WEIGHTS_NAME} and {STATE_NAME}) at "
                f"{self.ckpt_dir / LAST}, which is missing or incomplete. To start afresh in "
                f"{self.out}, pass --overwrite (overwrite=True) instead of --resume."
            )
        return folder

    def resume(self, folder: Path) -> tuple[int, int]:
        """Restore the checkpoint ``folder`` into this trainer; returns (epoch, position)."""
        state = read_pickle(folder / STATE_NAME)
        needed = {"step", "optimizer", "rank_positions", "config", "num_images"}
        needed |= {"cpu_rng", "images", CHECKPOINT_ID}
        if not (isinstance(state, dict) and needed <= set(state)) or not isinstance(
            state["config"], dict
        ):
            raise UsageError(
                f"{folder / STATE_NAME} is not a trainer state written by stellar train"
            )
        self._check_same_run(state, folder)
        weights, unknown = from_official(read_state_dict(folder / WEIGHTS_NAME)[0])
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
                raise UsageError(f"{folder} does not match the model: {stray[:10]}")
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except ValueError as err:  # another set of trained parameters (an older version)
                raise UsageError(
                    f"the optimizer state in {folder / STATE_NAME} does not fit this model's "
                    f"trained parameters ({err}): start a new run from these weights with "
                    f"init.checkpoint={folder}"
                ) from None
        torch.set_rng_state(state["cpu_rng"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.step = int(state["step"])
        self.run_id = str(state[CHECKPOINT_ID]).rpartition("-")[0]  # the run goes on
        logger.info("resumed from %s at step %d", folder, self.step)
        epoch, position = state["rank_positions"][self.dist.rank]
        return int(epoch), int(position)
