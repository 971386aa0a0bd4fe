"""Ctrl-C and SIGTERM during `stellar train` (issue 22, item 7): the current step finishes, a
checkpoint is written, one line says where and how to continue, and the exit status is not 0;
a second Ctrl-C stops at once; the run then resumes from that checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import TINY

LONG = [*TINY, "max_steps=100000", "epochs=1000", "log_every=1", "ckpt_every=100000"]


def _start(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stellar", "train", "--config", "cpu-smoke", *LONG]
    return subprocess.Popen(
        [*cmd, f"out={out}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_steps(out: Path, steps: int, proc: subprocess.Popen) -> None:
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {steps} steps logged: {proc.communicate(timeout=10)[1][-2000:]}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_a_checkpoint_and_says_how_to_continue(tmp_path, signum):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_steps(out, 2, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"stellar train: {signal.Signals(signum).name}: stopped at step" in last
    assert "--resume" in last
    step = int(last.split("stopped at step ")[1].split(",")[0])
    checkpoint = (out / "checkpoints" / "last").resolve()
    assert checkpoint.name == f"step-{step:08d}" and str(checkpoint) in last
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert rows[-1] == step  # the stopped step was completed and logged


def test_a_second_ctrl_c_stops_at_once():
    """The first Ctrl-C only asks for a stop; the second raises at once. (Two signals sent
    back to back may reach Python as one, so each is delivered and handled in turn.)"""
    import os

    from stellar.train.stopping import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
