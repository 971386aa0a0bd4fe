"""One training per run folder: a second one fails at start naming the first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from stellar.errors import UsageError
from stellar.train.runlock import LOCK_NAME, run_lock


def test_a_second_holder_is_refused_with_the_first_named(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        # the lock is per open file description: a second holder in another process
        code = textwrap.dedent(
            f"""
            from stellar.train.runlock import run_lock
            try:
                with run_lock({str(out)!r}):
                    print("acquired")
            except ValueError as err:
                print("refused:", err)
            """
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert "refused:" in done.stdout, done.stdout + done.stderr
        assert "in use by a running training" in done.stdout
        assert "pid " in done.stdout  # names the holder
    with run_lock(out):  # released on exit: the folder can be taken again
        pass


def test_a_lock_left_by_a_killed_process_is_not_stale(tmp_path):
    out = tmp_path / "run"
    code = (
        "import os\nfrom stellar.train.runlock import run_lock\n"
        f"with run_lock({str(out)!r}):\n    os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert (out / LOCK_NAME).exists()  # the file stays, the lock does not
    with run_lock(out):
        pass


def test_the_train_command_takes_the_lock(tmp_path, monkeypatch):
    from stellar.cli import main

    out = tmp_path / "run"
    with run_lock(out), pytest.raises(UsageError, match="in use by a running training"):
        # the same process holds the lock through another descriptor: flock refuses it too
        main(["train", "--config", "cpu-smoke", f"out={out}", "max_steps=1"])


def test_temporary_files_of_a_killed_run_are_cleaned_and_nothing_else(tmp_path):
    from stellar.train.runlock import clean_orphaned_temps

    out = tmp_path / "run"
    step = out / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    orphans = [
        out / ".metrics.jsonl.x1y2.tmp",
        step / ".model.safetensors.ab12.tmp",
        out / "checkpoints" / ".last.tmp",
        step / ".tmpGU46SD",  # the safetensors writer's own temporary (issue 22, item 4)
    ]
    keep = [out / "metrics.jsonl", step / "model.safetensors", out / "notes.tmp", step / ".tmpx"]
    for path in orphans + keep:
        path.write_bytes(b"x" * 100)
    with run_lock(out):
        assert clean_orphaned_temps(out) == 4
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in keep)


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed"),
        Exception("SafetensorError: Error while serializing: IoError(No space left on device)"),
    ],
)
def test_a_full_disk_names_the_file_and_says_the_previous_checkpoint_is_intact(
    tmp_path, monkeypatch, error
):
    """Issue 22, item 3: whichever writer fails, one error naming the folder, no partial one."""
    from stellar import create_stellar
    from stellar.train import checkpoint as ckpt

    model = create_stellar("stellar-tiny")
    root = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(root, 1, model, {"step": 1})

    def full(model, folder, weights=None):
        folder.mkdir(parents=True)
        (folder / "model.safetensors.tmp1234").write_bytes(b"partial")
        raise error

    monkeypatch.setattr(ckpt, "save_pretrained", full)
    with pytest.raises(UsageError, match="could not write checkpoint .*step-00000002") as err:
        ckpt.save_checkpoint(root, 2, model, {"step": 2})
    assert f"previous checkpoint {first} is intact" in str(err.value)
    assert ckpt.latest_checkpoint(root) == first
    assert not (root / "step-00000002").exists()
