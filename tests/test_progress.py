"""Progress bars: tqdm on a terminal, plain log lines at a fixed cadence in a pipe."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import types

import pytest
from tqdm.auto import tqdm

from stellar.progress import LoggedBar, progress_bar


@pytest.fixture(autouse=True)
def _outside_a_notebook(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_pipe_no_carriage_returns_and_a_line_every_n_steps(monkeypatch, caplog):
    stderr = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", stderr)
    with caplog.at_level(logging.INFO, logger="stellar.progress"):
        bar = progress_bar(range(200), desc="work")  # a line every 200 / LINES_PER_BAR steps
        for i in bar:
            bar.set_postfix(loss=f"{i:.1f}")  # must not add lines of its own
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "stellar.progress"]
    assert "\r" not in stderr.getvalue() and stderr.getvalue() == ""
    assert all("\r" not in line for line in lines)
    # the start and one line per 10 steps, the last of them the end (logged once)
    assert len(lines) == 21 and sum("200/200" in line for line in lines) == 1, lines
    assert lines[0].startswith("work:") and "200/200" in lines[-1]
    assert "loss=" in lines[-1]


def test_in_a_pipe_without_logging_set_up_the_lines_go_to_stderr():
    """A Python call under nohup or SLURM, where nothing set logging up, still shows progress."""
    code = "from stellar.progress import progress_bar as p\nfor _ in p(range(40), desc='w'): pass"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = done.stderr.splitlines()
    assert lines[0].startswith("w:") and "40/40" in lines[-1] and "\r" not in done.stderr


def test_default_cadence_is_about_twenty_lines(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger="stellar.progress"):
        for _ in progress_bar(range(1000), desc="long"):
            pass
    lines = [r for r in caplog.records if r.name == "stellar.progress"]
    assert 19 <= len(lines) <= 23


def test_on_a_terminal_it_is_tqdm_and_disable_is_silent(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", _Terminal())
    bar = progress_bar(range(3), desc="tty")
    assert isinstance(bar, tqdm) and not isinstance(bar, LoggedBar)
    bar.close()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger="stellar.progress"):
        for _ in progress_bar(range(50), disable=True):
            pass
    assert not [r for r in caplog.records if r.name == "stellar.progress"]


def test_in_a_notebook_it_is_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a kernel's stderr is no terminal
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    bar = progress_bar(range(3), desc="cell")
    assert isinstance(bar, tqdm) and not isinstance(bar, LoggedBar)
    bar.close()
