"""The one guard of output folders (stellar.outputs): a lock for the whole job, the
temporaries of a killed job cleaned, writability checked before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stellar.errors import UsageError
from stellar.outputs import LOCK_NAME, check_fresh, output_folder

_SECOND_JOB = """
from stellar.outputs import output_folder
{}
try:
    with output_folder({!r}, "second job"):
        print("acquired")
except ValueError as err:
    print("refused:", err)
"""


def _try_in_another_process(folder, before: str = "") -> str:
    """The second job's output; ``before`` runs first in its process."""
    code = _SECOND_JOB.format(before, str(folder))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout + done.stderr


def test_a_forked_child_outliving_its_killed_parent_does_not_hold_the_folder(tmp_path):
    """A data-loader worker lives on for seconds after its job is killed; a requeued job must
    not find the folder in use."""
    out, pid_file = tmp_path / "run", tmp_path / "worker.pid"
    code = textwrap.dedent(
        f"""
        import os, time
        from stellar.outputs import output_folder
        with output_folder({str(out)!r}, "first job"):
            if (pid := os.fork()) == 0:
                time.sleep(60)
                os._exit(0)
            open({str(pid_file)!r}, "w").write(str(pid))
            os._exit(0)  # killed: the block never ends
        """
    )
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, check=True)
    worker = int(pid_file.read_text())
    try:
        assert os.path.exists(f"/proc/{worker}")  # still running
        assert "acquired" in _try_in_another_process(out)
    finally:
        os.kill(worker, signal.SIGKILL)


def test_a_forked_child_leaving_the_block_leaves_the_parents_hold(tmp_path):
    out, parent = tmp_path / "run", os.getpid()  # made by this hold, empty when the child leaves

    def hold() -> None:
        with output_folder(out, "first job"):
            if (pid := os.fork()) == 0:
                return  # the child unwinds the block
            assert os.waitpid(pid, 0)[1] == 0  # the child's unwinding raised nothing
            assert (out / LOCK_NAME).is_file()
            assert "refused:" in _try_in_another_process(out)  # still held

    try:
        hold()
    except BaseException:
        if os.getpid() != parent:  # never let the forked child go on into pytest
            os._exit(1)
        raise
    if os.getpid() != parent:
        os._exit(0)


def test_a_job_refused_by_the_holder_leaves_the_holders_new_folder(tmp_path):
    """Two jobs started at once: the second saw no folder, the first made it and holds it."""
    out = tmp_path / "run"
    with output_folder(out, "first job"):
        result = _try_in_another_process(out, "import os; os.path.exists = lambda p: False")
        assert "refused: " in result, result
        assert (out / LOCK_NAME).is_file()  # the holder's folder and lock are intact


def test_a_refused_job_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(UsageError, match="bad input"), output_folder(out, "job"):
        raise UsageError("bad input")
    assert not out.exists() and (tmp_path / "new").is_dir()
    out.mkdir()  # a folder that was there before stays
    with pytest.raises(UsageError, match="bad input"), output_folder(out, "job"):
        raise UsageError("bad input")
    assert out.is_dir()
    through_missing = tmp_path / "ghost" / ".." / "new" / "out"  # names `out` too
    with pytest.raises(UsageError, match="bad input"), output_folder(through_missing, "job"):
        raise UsageError("bad input")
    assert out.is_dir()


def test_a_second_holder_is_refused_with_the_first_named(tmp_path):
    out = tmp_path / "run"
    with output_folder(out, "first job"):
        result = _try_in_another_process(out)
        assert "refused:" in result and "in use by first job" in result, result
        assert "pid " in result  # names the holder
    assert "acquired" in _try_in_another_process(out)  # released at the end of the block


def test_a_failed_record_write_leaves_the_last_holders_record(tmp_path, monkeypatch):
    with output_folder(tmp_path, "job"):
        (tmp_path / "result.txt").write_text("kept")
    before = (tmp_path / LOCK_NAME).read_text()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    for name in ("write", "pwrite"):
        monkeypatch.setattr(os, name, full_disk)
    with pytest.raises(UsageError, match="No space left"), output_folder(tmp_path, "job"):
        pass
    monkeypatch.undo()
    assert (tmp_path / LOCK_NAME).read_text() == before  # the folder still says whose it is


def test_the_holding_process_may_enter_again(tmp_path):
    with output_folder(tmp_path, "command"), output_folder(tmp_path, "the function it calls"):
        assert "refused:" in _try_in_another_process(tmp_path)
    assert "acquired" in _try_in_another_process(tmp_path)


def test_a_lock_left_by_a_killed_process_is_not_stale(tmp_path):
    out = tmp_path / "run"
    code = (
        "import os\nfrom stellar.outputs import output_folder\n"
        f"with output_folder({str(out)!r}, 'job'):\n    os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert (out / LOCK_NAME).exists()  # the file stays, the lock does not
    with output_folder(out, "job"):
        pass


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_unusable_folder_is_one_error_naming_it(tmp_path, where):
    base = tmp_path / "f"
    base.write_text("x")
    target = base if where == "file" else base / "out"
    with pytest.raises(UsageError, match=f"--out '{target}'"), output_folder(target, "job"):
        pass


def test_the_train_command_takes_the_lock(tmp_path, held_by_another_process):

    from stellar.cli import main

    out = tmp_path / "run"
    refused = pytest.raises(UsageError, match="in use by a training")
    with held_by_another_process(out, "a training"), refused:
        main(["train", "--config", "cpu-smoke", f"out={out}", "max_steps=1"])
    assert not (out / "config.yaml").exists()  # refused before anything was written


def test_temporary_files_of_a_killed_job_are_cleaned_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    step = out / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    orphans = [
        out / ".metrics.jsonl.x1y2.tmp",
        out / ".shard-00003.safetensors.k2j4h5g6.tmp",  # extract's (issue 22, item 4)
        step / ".model.safetensors.ab12.tmp",
        out / "checkpoints" / ".last.tmp",
        step / ".tmpGU46SD",  # the safetensors writer's own temporary (issue 22, item 4)
    ]
    keep = [out / "metrics.jsonl", step / "model.safetensors", out / "notes.tmp", step / ".tmpx"]
    for path in orphans + keep:
        path.write_bytes(b"x" * 100)
    with output_folder(out, "job"):
        assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in keep)


def test_a_folder_holding_a_previous_job_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "shard-00000.safetensors").write_text("")
    (tmp_path / "notes.txt").write_text("")
    patterns = ("meta.json", "shard-*.safetensors")
    with pytest.raises(UsageError, match="meta.json, shard-00000.safetensors.*--overwrite"):
        check_fresh(tmp_path, patterns, False, "features")
    old = check_fresh(tmp_path, patterns, True, "features")
    assert sorted(p.name for p in old) == ["meta.json", "shard-00000.safetensors"]
    assert check_fresh(tmp_path / "empty", patterns, False, "features") == []


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed"),
        type("SafetensorError", (Exception,), {})("Error while serializing: IoError(No space)"),
    ],
)
def test_a_full_disk_names_the_file_and_says_the_previous_checkpoint_is_intact(
    tmp_path, monkeypatch, error
):
    """Issue 22, item 3: whichever writer fails, one error naming the file, no partial folder."""
    from stellar import create_stellar
    from stellar.checkpoint import io
    from stellar.train import checkpoint as ckpt

    model = create_stellar("stellar-tiny")
    root = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(root, 1, model, {"step": 1, ckpt.CHECKPOINT_ID: "run-1"})

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise error

    monkeypatch.setattr(io, "save_file", full)
    with pytest.raises(UsageError, match="could not write .*step-00000002/model.safe") as err:
        ckpt.save_checkpoint(root, 2, model, {"step": 2, ckpt.CHECKPOINT_ID: "run-2"})
    assert f"previous checkpoint {first} is intact" in str(err.value)
    assert ckpt.latest_checkpoint(root) == first
    assert not (root / "step-00000002").exists()


def test_a_full_disk_during_the_trainer_state_removes_the_step_folder(tmp_path, monkeypatch):
    """The weights fit, torch.save of the trainer state does not (as torch words a full tmpfs)."""
    from stellar import create_stellar
    from stellar.train import checkpoint as ckpt

    model = create_stellar("stellar-tiny")
    root = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(root, 1, model, {"step": 1, ckpt.CHECKPOINT_ID: "run-1"})

    def full(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 726")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(UsageError, match="could not write .*step-00000002/trainer_state.pt"):
        ckpt.save_checkpoint(root, 2, model, {"step": 2, ckpt.CHECKPOINT_ID: "run-2"})
    assert ckpt.latest_checkpoint(root) == first
    assert not (root / "step-00000002").exists()


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 726"),
        RuntimeError("basic_ios::clear: iostream error"),
    ],
)
def test_a_failed_write_names_the_file_and_keeps_the_previous_one(tmp_path, error):
    """Issue 22, one error boundary: a full disk under any output is one line, not a traceback."""
    from stellar.outputs import atomic_write

    path = tmp_path / "metrics.json"
    atomic_write(path, lambda tmp: tmp.write_text("old"))

    def full(tmp):
        tmp.write_text("half")
        raise error

    with pytest.raises(UsageError, match=f"could not write {path} .*previous file is intact"):
        atomic_write(path, full)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with pytest.raises(ZeroDivisionError):  # a bug of ours keeps its traceback
        atomic_write(path, lambda tmp: 1 / 0)


def test_links_never_lead_the_guard_out_of_the_folder(tmp_path):
    """A planted `.lock` link is not followed (it would truncate its target), and temporaries
    are cleaned only inside the folder, not through a linked sub-folder."""
    victim, elsewhere = tmp_path / "victim.txt", tmp_path / "elsewhere"
    victim.write_text("precious")
    elsewhere.mkdir()
    (elsewhere / ".keep.abcd1234.tmp").write_text("not ours")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(elsewhere)
    with output_folder(out, "job"):
        pass
    assert (elsewhere / ".keep.abcd1234.tmp").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UsageError, match=f"{LOCK_NAME}"), output_folder(other, "job"):
        pass
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["", "x" * 300, "loop"])
def test_odd_folder_names_are_one_error(tmp_path, name):
    if name == "loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        name = str(tmp_path / "a")
    elif name:
        name = str(tmp_path / name)
    with pytest.raises(UsageError, match="--out"), output_folder(name, "job"):
        pass


def test_an_atomic_write_gets_the_mode_of_a_plain_open_whatever_the_writer_does(tmp_path):
    import os

    from stellar.outputs import atomic_write

    def recreate(tmp):  # as safetensors does: its own file renamed over ours (mode 0o600)
        other = tmp.with_name("other")
        other.write_text("x")
        other.chmod(0o600)
        os.replace(other, tmp)

    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "a.txt", recreate)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_folder_that_cannot_be_opened_for_fsync_does_not_fail_the_write(tmp_path, monkeypatch):
    """The rename already happened: fsync of the folder is best effort (a folder writable but
    not readable, a filesystem that refuses it), never an error after a successful write."""
    import os

    from stellar import outputs

    real_open = os.open

    def refuse_folders(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(outputs.os, "open", refuse_folders)
    target = tmp_path / "result.txt"
    outputs.atomic_write(target, lambda tmp: tmp.write_text("done"))
    assert target.read_text() == "done"
