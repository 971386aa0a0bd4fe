"""The trainer: exact resume across processes, checkpoints, non-finite stops, config parsing."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import TINY as TINY_RUN
from tiny_run import photo_folder

import stellar
from stellar import load_stellar
from stellar.train.config import load_config
from stellar.train.trainer import Trainer, TrainingDiverged

TINY = [*TINY_RUN, "ckpt_every=100"]


def _train_cli(out: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "stellar",
        "train",
        "--config",
        "cpu-smoke",
        f"out={out}",
        *TINY,
        *extra,
    ]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_resume_in_a_fresh_process_matches_straight_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    # the two first runs in this process (the command is the same call), the resume in a new one
    stellar.train("cpu-smoke", [f"out={straight}", *TINY, "max_steps=6"])
    stellar.train("cpu-smoke", [f"out={split}", *TINY, "max_steps=6", "stop_at=3"])
    assert sorted(_losses(split)) == [1, 2, 3]
    _train_cli(split, "max_steps=6", "--resume")
    assert _losses(split) == _losses(straight)
    a = load_stellar(straight / "checkpoints" / "last", purpose="pretrain").state_dict()
    b = load_stellar(split / "checkpoints" / "last", purpose="pretrain").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_checkpoint_is_loadable_and_last_points_at_newest(tmp_path):
    cfg = load_config(
        "cpu-smoke", [*TINY, f"out={tmp_path}", "max_steps=4", "ckpt_every=2", "keep_checkpoints=1"]
    )
    Trainer(cfg).train()
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "last").resolve().name == "step-00000004"
    assert [p.name for p in ckpts.glob("step-*")] == ["step-00000004"]
    model = load_stellar(ckpts / "last", purpose="encode")
    assert model.encode(torch.rand(1, 3, 64, 64))["sparse"].shape == (1, 6, 96)


def test_nonfinite_loss_stops_with_the_step_and_terms(tmp_path):
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}", "max_steps=5", "ckpt_every=1"])
    trainer = Trainer(cfg)
    step = trainer.train_step

    def poisoned_after_three_steps(micro):
        if trainer.step == 3:
            with torch.no_grad():
                trainer.model.sparse_tokens.fill_(float("nan"))
        return step(micro)

    trainer.train_step = poisoned_after_three_steps
    # the fourth step diverges: numbered as metrics rows and checkpoint folders number steps
    with pytest.raises(TrainingDiverged, match=r"step 4: non-finite.*step-00000003"):
        trainer.train()
    good = tmp_path / "checkpoints" / "step-00000003"
    assert (tmp_path / "checkpoints" / "last").resolve() == good.resolve()
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert logged == [1, 2, 3]


def test_nonfinite_skip_flag_keeps_going(tmp_path):
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}", "max_steps=2", "nonfinite=skip"])
    trainer = Trainer(cfg)
    with torch.no_grad():
        trainer.model.sparse_tokens.fill_(float("nan"))
    before = trainer.model.encoder.patch_embed.weight.clone()
    trainer.train()
    torch.testing.assert_close(trainer.model.encoder.patch_embed.weight, before)


def test_config_overrides_and_errors():
    cfg = load_config("cpu-smoke", ["optim.lr=1e-3", "objective.set_align=false", "batch_size=3"])
    assert cfg.optim.lr == 1e-3 and cfg.objective.set_align is False and cfg.batch_size == 3
    with pytest.raises(ValueError, match="unknown config key.*optim.lrr"):
        load_config("cpu-smoke", ["optim.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config("cpu-smoke", ["batch_size"])
    with pytest.raises(ValueError, match="neither a YAML file nor a preset"):
        load_config("no-such-preset")


def test_unknown_colour_augmentation_key_fails_before_training(tmp_path):
    for key in ("hu", "global_size"):  # a misspelt key; a key of augment, not of its colour
        with pytest.raises(ValueError, match=rf"key\(s\) augment.color.{key};.*hue"):
            load_config("cpu-smoke", [*TINY, f"out={tmp_path}", f"augment.color.{key}=0.5"])
    assert not (tmp_path / "checkpoints").exists()
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}", "augment.color.hue=0.5"])
    assert Trainer(cfg).cfg.augment.color.hue == 0.5


def test_folder_without_images_fails_before_training(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = load_config("cpu-smoke", ["data.source=folder", f"data.root={tmp_path / 'empty'}"])
    with pytest.raises(ValueError, match="found none"):
        Trainer(cfg)


def test_a_batch_larger_than_the_data_is_one_line_before_the_model_is_built(
    tmp_path, monkeypatch, capsys
):
    """Issue 22, item 8: the key, the data set's size and the fix; no work, no files."""
    from stellar.cli import console

    photos = photo_folder(tmp_path / "photos", 6)
    trainer_module = importlib.import_module("stellar.train.trainer")
    monkeypatch.setattr(trainer_module, "build_model", _must_not_run)
    out = tmp_path / "run"
    code = console(["train", "--config", "cpu-smoke", *TINY, *photos, "batch_size=7", f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "batch_size" in err and "6 images" in err and "lower batch_size" in err
    assert not [p for p in out.rglob("*") if p.name != ".lock"]


def _must_not_run(*args, **kwargs):
    raise AssertionError("built the model before refusing the settings")


def test_trains_on_an_image_folder(tmp_path):
    from PIL import Image

    for i in range(8):
        Image.new("RGB", (40 + 8 * i, 50), (30 * i, 100, 200)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    cfg = load_config(
        "cpu-smoke",
        [
            *TINY,
            "data.source=folder",
            f"data.root={tmp_path}",
            "data.canvas_size=72",
            f"out={tmp_path / 'run'}",
            "max_steps=2",
        ],
    )
    last = Trainer(cfg).train()
    assert last["step"] == 2 and all(torch.isfinite(torch.tensor(v)) for v in last.values())


def test_a_logged_progress_line_shows_the_loss_of_its_own_step(tmp_path, caplog, monkeypatch):
    import io
    import logging

    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe: the bar logs a line per step
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # the notebook test's import
    overrides = [*TINY, "progress=true", "max_steps=4", "log_every=2", f"out={tmp_path}"]
    with caplog.at_level(logging.INFO, logger="stellar.progress"):
        Trainer(load_config("cpu-smoke", overrides)).train()
    lines = {r.getMessage().split("/4")[0].split()[-1]: r.getMessage() for r in caplog.records}
    losses = _losses(tmp_path)
    for step in (2, 3, 4):  # step 3 shows the latest logged loss, step 2's
        assert f"loss={losses[step - step % 2]:.3f}" in lines[str(step)], lines


def test_skipped_batches_are_counted_and_a_resume_after_them_is_exact(tmp_path):
    from stellar.data.loader import ResumableSampler

    # The first batch of epoch 0 and its third batch are all unreadable.
    order = list(ResumableSampler(16, seed=0))
    folder = photo_folder(tmp_path / "photos", 16, broken=order[0:4] + order[8:12])

    def trainer(out, *extra, resume=False):
        args = [*TINY, *folder, "data.seed=0", "max_steps=3", f"out={out}", *extra]
        return Trainer(load_config("cpu-smoke", args), resume=resume)

    whole = trainer(tmp_path / "whole")
    last = whole.train()
    assert last["skipped_images"] == 8  # the summary's count (all files have been read)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    counts = [r["skipped_images"] for r in rows]  # the log's (the start-up check reads some)
    assert len(counts) == 3 and 4 <= counts[0] <= counts[1] <= counts[2] == 8
    trainer(tmp_path / "parts", "stop_at=1").train()
    state = torch.load(tmp_path / "parts/checkpoints/last/trainer_state.pt", weights_only=True)
    assert state["rank_positions"] == [[0, 8]]  # the skipped batch was read: the sampler is past it
    resumed = trainer(tmp_path / "parts", resume=True)
    resumed.train()
    want, got = whole.model.state_dict(), resumed.model.state_dict()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=0, msg=name)


def test_gradient_accumulation_consumes_micro_batches(tmp_path):
    cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}", "max_steps=2", "grad_accum=3"])
    trainer = Trainer(cfg)
    assert trainer.steps_per_epoch == 64 // (4 * 3)
    last = trainer.train()
    assert last["step"] == 2
    state = torch.load(tmp_path / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert state["rank_positions"][0][1] == 2 * 3 * 4  # samples consumed on this rank


class _NotDDP(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule: wraps DDP but is no DDP instance."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, *args):
        return self.inner(*args)


def test_compiled_ddp_all_reduces_only_the_last_micro_batch(tmp_path, monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from stellar.runtime import DistInfo

    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        skipped = []
        no_sync = DistributedDataParallel.no_sync

        def counting(self):
            skipped.append(1)
            return no_sync(self)

        monkeypatch.setattr(DistributedDataParallel, "no_sync", counting)
        # Compiling for real takes minutes on a CPU; the wrapper is what broke no_sync.
        monkeypatch.setattr(torch, "compile", lambda module, **kwargs: _NotDDP(module))
        cfg = load_config(
            "cpu-smoke", [*TINY, f"out={tmp_path}", "compile=true", "grad_accum=3", "max_steps=1"]
        )
        trainer = Trainer(cfg, DistInfo(rank=0, world_size=2))  # DDP on a 1-process group
        assert isinstance(trainer.step_fn, _NotDDP)
        assert not trainer.ddp.find_unused_parameters  # every term on: no parameter unused
        batches = iter(trainer.loader)
        trainer.train_step([next(batches) for _ in range(3)])
        assert len(skipped) == 2
    finally:
        dist.destroy_process_group()


def test_ablated_ddp_looks_for_unused_parameters(tmp_path):
    import torch.distributed as dist

    from stellar.runtime import DistInfo

    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        off = [
            "objective.clustering=false",
            "objective.set_align=false",
            "objective.cls_align=false",
        ]
        extra = [*off, "activation_checkpointing=true"]
        cfg = load_config("cpu-smoke", [*TINY, f"out={tmp_path}", *extra])
        trainer = Trainer(cfg, DistInfo(rank=0, world_size=2))
        assert trainer.model.encoder.checkpoint_blocks
        assert trainer.ddp.find_unused_parameters
        assert trainer.plan.local == 0 and trainer.plan.masked == 2  # KoLeo still masks
        batches = iter(trainer.loader)
        views = trainer.make_views(next(batches), trainer.generator(0))
        assert set(views) == {"image", "masked_views", "keep_idx"}
    finally:
        dist.destroy_process_group()


def test_the_train_function_and_the_command_give_the_same_run(tmp_path):
    from stellar.cli import main
    from stellar.train import train

    run = train("cpu-smoke", TINY, out=tmp_path / "py", max_steps=2, optim__lr=1e-3)
    assert run.out == tmp_path / "py" and run.metrics["step"] == 2
    assert "\n" not in repr(run) and repr(run).endswith("model=StellarForPretraining)")
    assert (run.out / "checkpoints" / "last" / "model.safetensors").is_file()
    cli = tmp_path / "cli"
    argv = ["train", "--config", "cpu-smoke", *TINY, f"out={cli}", "max_steps=2", "optim.lr=1e-3"]
    assert main(argv) == 0
    assert _losses(cli) == _losses(run.out)
    got = load_stellar(cli, purpose="pretrain").state_dict()  # a run folder: its last checkpoint
    for name, value in run.model.state_dict().items():
        if not name.startswith("tokenizer."):
            torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    # A resume from Python: the saved settings, only the listed ones may change.
    assert train(resume=True, out=run.out, max_steps=3).metrics["step"] == 3
    with pytest.raises(ValueError, match="these differ: batch_size 4 -> 2"):
        train(resume=True, out=run.out, batch_size=2)


def test_a_missing_image_folder_is_named_before_training(tmp_path):
    from stellar.errors import UsageError

    folder = ["data.source=folder", f"out={tmp_path / 'run'}"]
    with pytest.raises(UsageError, match="needs data.root="):
        Trainer(load_config("cpu-smoke", [*TINY, *folder]))
    with pytest.raises(UsageError, match="'.*nowhere' \\(no such file or folder\\)"):
        Trainer(load_config("cpu-smoke", [*TINY, *folder, f"data.root={tmp_path / 'nowhere'}"]))
