"""Resume edge cases: a missing checkpoint, changed optimizer settings, a new EMA teacher, and
the data order every rank resumes from."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from tiny_run import TINY as TINY_RUN
from tiny_run import photo_folder

from stellar.cli import console, main
from stellar.data.loader import ResumableSampler
from stellar.errors import UsageError
from stellar.train.config import load_config
from stellar.train.trainer import Trainer

TINY = [*TINY_RUN, "ckpt_every=100", "max_steps=3"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run checkpointed at step 2 of 3 (no EMA), copied fresh for each test."""
    out = tmp_path_factory.mktemp("base") / "run"
    Trainer(load_config("cpu-smoke", [*TINY, f"out={out}", "stop_at=2"])).train()
    return out


@pytest.fixture
def run(stopped_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(stopped_run, copy, symlinks=True)
    return copy


def _trainer(out, *extra, resume=False):
    return Trainer(load_config("cpu-smoke", [*TINY, f"out={out}", *extra]), resume=resume)


def _break_dangling(run):
    shutil.rmtree(run / "checkpoints" / "step-00000002")


def _break_state(run):
    os.remove(run / "checkpoints" / "step-00000002" / "trainer_state.pt")


@pytest.mark.parametrize("damage", [_break_dangling, _break_state])
def test_resume_without_a_usable_checkpoint_fails_before_writing(run, damage):
    damage(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="checkpoints/last, which is missing.*--overwrite"):
        _trainer(run, resume=True).train()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_stopped_before_its_first_checkpoint_restarts_with_overwrite(tmp_path):
    """Issue 22, item 6: each refusal names the one flag that works, and it does."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("batch_size: 4\n")  # what a run writes before step 1
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(UsageError, match="--overwrite") as fresh:
        _trainer(out).train()
    assert "--resume" not in str(fresh.value)  # there is nothing to resume
    with pytest.raises(UsageError, match="missing or incomplete.*pass --overwrite"):
        _trainer(out, resume=True).train()
    _trainer(out).train(overwrite=True)
    assert (out / "checkpoints" / "last").is_dir()


class Planted:
    """A Python object: unpickling it would run code (a planted pickle)."""


def _write_state(path, kind):
    import pickle

    import torch

    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "garbage":
        path.write_bytes(b"not a pickle at all" * 10)
    elif kind == "planted":
        path.write_bytes(pickle.dumps(Planted(), protocol=2))
    else:  # a readable pickle that is not a trainer state
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "planted", "foreign"])
def test_a_damaged_trainer_state_is_one_line_naming_it(run, kind, capsys):
    """Issue 22, item 5: no torch.load traceback, no advice to drop weights_only."""
    state = run / "checkpoints" / "step-00000002" / "trainer_state.pt"
    _write_state(state, kind)
    code = console(["train", "--config", "cpu-smoke", *TINY, f"out={run}", "--resume"])
    err = capsys.readouterr().err
    assert code != 0 and str(state) in err
    assert "weights_only" not in err and "Traceback" not in err


def test_an_optimizer_state_of_other_parameters_is_one_line_naming_it(run, capsys):
    """A state saved for another set of trained parameters (e.g. by a version that trained the
    tokenizer too) is refused with the way out, not torch's traceback."""
    import torch

    state_path = run / "checkpoints" / "step-00000002" / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["optimizer"]["param_groups"][0]["params"].append(10**6)
    torch.save(state, state_path)
    code = console(["train", "--config", "cpu-smoke", *TINY, f"out={run}", "--resume"])
    err = capsys.readouterr().err
    assert code != 0 and str(state_path) in err and "init.checkpoint=" in err
    assert "Traceback" not in err


def test_resume_into_a_mistyped_out_fails_from_the_command_line(tmp_path):
    typo = tmp_path / "rnu"
    with pytest.raises(ValueError, match=r"rnu/config.yaml does not exist \(is out= right\?\)"):
        main(["train", "--config", "cpu-smoke", f"out={typo}", "--resume", *TINY])
    assert not typo.exists()


@pytest.mark.parametrize("length", [15, 16, 17])
def test_every_rank_gets_the_same_share_of_each_epoch(length):
    world = 2
    ranks = [ResumableSampler(length, seed=1, rank=r, world=world) for r in range(world)]
    orders = [list(s) for s in ranks]
    assert [len(o) for o in orders] == [length // world] * world
    assert [len(s) for s in ranks] == [length // world] * world
    assert len(set(orders[0] + orders[1])) == length - length % world  # disjoint
    for sampler in ranks:  # a resumed position means the same on every rank
        sampler.set_position(epoch=3, start=5)
    assert [len(list(s)) for s in ranks] == [len(s) for s in ranks] == [length // world - 5] * 2


def test_resume_keeps_each_metrics_row_once(run):
    metrics = run / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
    with metrics.open("a") as f:  # logged after the step-2 checkpoint, then the process died
        f.write('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
    _trainer(run, resume=True).train()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] != 1.0


def test_resume_drops_a_metrics_tail_that_is_not_utf8(run):
    """Issue 22, item 8: a crash mid-line may leave any bytes; the resume still runs."""
    metrics = run / "metrics.jsonl"
    with metrics.open("ab") as f:
        f.write(b'{"step": 3, "loss": 1.0}\n{"step": 4, "lo\xff\xfe\x80')
    _trainer(run, resume=True).train()
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


def test_resume_with_other_data_settings_fails_before_loading(run):
    trainer = _trainer(run, "batch_size=2", "data.seed=1", resume=True)
    with pytest.raises(UsageError, match=r"batch_size 4 -> 2; data.seed 0 -> 1\..*init.checkpoint"):
        trainer.train()
    with pytest.raises(UsageError, match="already holds a run"):  # the failed resume owns nothing
        _trainer(run, "batch_size=2", "data.seed=1").train()


def test_a_fresh_trainer_refuses_an_old_run_unless_told_to_overwrite_it(run):
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(UsageError, match=r"already holds a run \(config.yaml, metrics.jsonl, che"):
        _trainer(run, "max_steps=1").train()
    assert (run / "metrics.jsonl").read_bytes() == before  # refused before anything is written
    _trainer(run, "max_steps=1").train(overwrite=True)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()] == [1]
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000001"]


def test_resuming_a_finished_run_leaves_its_checkpoint_untouched(run, caplog):
    caplog.set_level(logging.INFO, logger="stellar.train.trainer")
    _trainer(run, resume=True).train()  # steps 3 of 3
    assert "nothing to train" not in caplog.text
    last = (run / "checkpoints" / "last").resolve()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in last.iterdir()}
    config = (run / "config.yaml").read_bytes()
    _trainer(run, "max_steps=2", resume=True).train()
    assert "already at step 3 of 2: nothing to train" in caplog.text
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in last.iterdir()} == before
    assert (run / "config.yaml").read_bytes() == config  # the run's settings stay its own


def test_a_moved_image_folder_resumes_but_a_changed_one_does_not(tmp_path, caplog):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        Image.new("RGB", (40, 40), (30 * i, 100, 200)).save(photos / f"{i}.png")
    folder = ["data.source=folder", "data.canvas_size=40"]
    run = tmp_path / "run"
    _trainer(run, *folder, f"data.root={photos}", "stop_at=1").train()
    moved = photos.rename(tmp_path / "elsewhere")
    caplog.set_level(logging.INFO, logger="stellar.train")
    _trainer(run, *folder, f"data.root={moved}", "stop_at=2", resume=True).train()
    # a changed setting of the run is a warning; stop_at is this invocation's, not the run's
    changes = [r for r in caplog.records if "changed setting" in r.getMessage()]
    assert [r.levelno for r in changes] == [logging.WARNING], caplog.text
    assert f"data.root '{photos}' -> '{moved}'" in changes[0].getMessage()
    Image.new("RGB", (40, 40)).save(moved / "8.png")
    with pytest.raises(UsageError, match=r"image folder changed .*\(8 images then, 9 now\)"):
        _trainer(run, *folder, f"data.root={moved}", resume=True).train()


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def _resume_cli(run, capsys, *extra):
    """``stellar train out=RUN --resume``: (exit status, stderr)."""
    code = console(["train", f"out={run}", "--resume", *extra])
    return code, capsys.readouterr().err


def test_resume_after_images_were_removed_is_one_line_with_the_counts(tmp_path, capsys):
    """Issue 22, item 8: the checkpoint's data order is over the folder's images then."""
    photos = photo_folder(tmp_path / "photos", 8)
    run = tmp_path / "run"
    _trainer(run, *photos, "stop_at=1").train()
    (tmp_path / "photos" / "07.png").unlink()
    before = _files(run)
    code, err = _resume_cli(run, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "8 images then, 7 now" in err and "init.checkpoint=" in err
    assert _files(run) == before
    (tmp_path / "photos" / "00.png").rename(tmp_path / "photos" / "renamed.png")
    (tmp_path / "photos" / "07.png").write_bytes((tmp_path / "photos" / "01.png").read_bytes())
    code, err = _resume_cli(run, capsys)  # as many images as then, but other files
    assert code == 2 and "changed since" in err and "other names or sizes" in err


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_hand_edited_config_yaml_follows_the_resume_rule(run, capsys, caplog):
    """Issue 22, item 8: config.yaml is held to the checkpoint's settings like an override:
    a changed resumable key is logged, any other is refused by name before anything runs."""
    config = run / "config.yaml"
    _edit(config, "  lr: 0.0005\n", "  lr: 0.001\n")
    before = _files(run)
    code, err = _resume_cli(run, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "optim.lr 0.0005 -> 0.001" in err and str(config) in err
    assert _files(run) == before
    _edit(config, "  lr: 0.001\n", "  lr: 0.0005\n")
    _edit(config, "log_every: 1\n", "log_every: 2\n")
    caplog.set_level(logging.INFO, logger="stellar.train")
    assert _resume_cli(run, capsys)[0] == 0
    assert "log_every 1 -> 2" in caplog.text


@pytest.mark.parametrize(
    "damage",
    [b"optim: {lr: [1\n", b"batch_size: abc\n", b"\xff\xfe not text"],
    ids=["yaml", "value", "bytes"],
)
def test_a_broken_config_yaml_is_one_line_naming_it(run, capsys, damage):
    config = run / "config.yaml"
    config.write_bytes(config.read_bytes() + damage)
    before = _files(run)
    code, err = _resume_cli(run, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(config) in err
    assert _files(run) == before


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A second run with the same settings as ``stopped_run``: only its run id differs."""
    out = tmp_path_factory.mktemp("other") / "run"
    Trainer(load_config("cpu-smoke", [*TINY, f"out={out}", "stop_at=2"])).train()
    return out


def test_a_trainer_state_from_another_run_is_refused_naming_both_files(run, other_run, capsys):
    """Issue 22, item 10: the state and the weights of a checkpoint are saved together."""
    folder = run / "checkpoints" / "step-00000002"
    shutil.copy(other_run / "checkpoints" / "step-00000002" / "trainer_state.pt", folder)
    before = _files(run)
    code, err = _resume_cli(run, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(folder / "trainer_state.pt") in err and str(folder / "model.safetensors") in err
    assert _files(run) == before


def test_a_resume_with_another_number_of_processes_is_refused(run, tmp_path):
    """README, Resume: another number of processes is refused before any step."""
    import torch.distributed as dist

    from stellar.runtime import DistInfo

    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:  # two ranks as far as the trainer knows (DDP on a one-process group)
        cfg = load_config("cpu-smoke", [*TINY, f"out={run}"])
        trainer = Trainer(cfg, DistInfo(0, 2), resume=True)
        before = _files(run)
        with pytest.raises(UsageError, match="saved by 1 processes, this run has 2.*run it with 1"):
            trainer.train()
        assert _files(run) == before
    finally:
        dist.destroy_process_group()


def test_a_run_from_init_checkpoint_resumes_without_its_source_from_another_folder(
    run, tmp_path, monkeypatch
):
    """A resume builds the architecture only: the run's checkpoint restores every weight, so
    the init.checkpoint it started from may be gone; relative paths were recorded absolute."""
    photos = tmp_path / "work" / "photos"
    photo_folder(photos, 8)
    monkeypatch.chdir(tmp_path / "work")
    rel = ["data.source=folder", "data.root=photos", "data.canvas_size=72"]
    continued = tmp_path / "continued"
    _trainer(continued, *rel, "init.checkpoint=../run", "stop_at=2").train()
    shutil.rmtree(run)  # the source run is gone
    monkeypatch.chdir(tmp_path)  # and this is another working folder
    saved = load_config(continued / "config.yaml")
    assert saved.data.root == str(photos) and saved.init.checkpoint == "../run"
    assert main(["train", f"out={continued}", "--resume"]) == 0
    assert json.loads((continued / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


def test_a_photo_removed_during_a_run_is_skipped_and_the_run_checkpoints(tmp_path):
    """The folder's id is taken when it is scanned: a file gone later is a skipped image (as
    the README promises), not a failed checkpoint."""
    photos = photo_folder(tmp_path / "photos", 8)
    trainer = _trainer(tmp_path / "run", *photos, "stop_at=2")
    (tmp_path / "photos" / "03.png").unlink()
    trainer.train()
    assert (tmp_path / "run" / "checkpoints" / "last" / "model.safetensors").is_file()
