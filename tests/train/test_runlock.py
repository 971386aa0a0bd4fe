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
