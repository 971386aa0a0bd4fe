"""The ``stellar`` console script: bad input in one line, the traceback only with -v."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest

from stellar.cli import console
from stellar.demo import scenes_command
from stellar.errors import Bounds, UsageError, nonneg_float, positive_int


def test_bad_input_is_one_line_on_stderr_with_exit_code_2(capsys) -> None:
    assert console(["train", "--config", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stellar train: error: 'no-such-preset' is neither a YAML file")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_verbose_keeps_the_traceback() -> None:
    with pytest.raises(UsageError, match="neither a YAML file nor a preset"):
        console(["-v", "train", "--config", "no-such-preset"])


def test_our_info_lines_show_and_other_libraries_only_from_warnings() -> None:
    import subprocess
    import sys

    code = (
        "import logging\nfrom stellar.cli import main\nmain([])\n"  # help: logging set up
        "for name in ('stellar.x', 'httpx'):\n"
        "    logging.getLogger(name).info('info of %s', name)\n"
        "    logging.getLogger(name).warning('warning of %s', name)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "info of stellar.x" in run.stderr and "warning of httpx" in run.stderr, run.stderr
    assert "info of httpx" not in run.stderr


def test_a_bug_keeps_its_traceback_even_when_it_is_a_value_error(monkeypatch, tmp_path) -> None:
    # A ValueError raised by code (e.g. a shape mismatch mid-training) is not bad input.
    def broken(*args) -> None:
        raise ValueError("shape [2, 3] is invalid for input of size 5")

    monkeypatch.setattr(scenes_command, "export_scenes", broken)
    with pytest.raises(ValueError, match="shape"):
        console(["scenes", "--out", str(tmp_path / "scenes")])


def test_usage_error_is_a_value_error() -> None:
    # The Python API keeps its ValueError contract for bad arguments.
    assert issubclass(UsageError, ValueError)


@pytest.mark.parametrize("argv", [["--bogus"], ["--bogus", "train"], ["train", "--bogus"]])
def test_an_unknown_flag_exits_non_zero(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        console(argv)
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_number_types_reject_out_of_range_text_naming_the_rule() -> None:
    assert positive_int("3") == 3
    assert nonneg_float("0") == 0.0
    for parse, text, rule in (
        (positive_int, "0", ">= 1"),
        (positive_int, "1.5", ">= 1"),
        (nonneg_float, "-1e-3", ">= 0"),
        (nonneg_float, "nan", ">= 0"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"{rule}, got {text!r}")):
            parse(text)


def test_argparse_reports_a_bad_number_before_any_work(capsys) -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--k", type=positive_int, default=1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--k", "0"])
    assert "argument --k: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_bounds_describe_and_contain() -> None:
    assert Bounds(0, 1, high_open=True).describe() == "in [0, 1)"
    assert Bounds(low=0, low_open=True).describe() == "> 0"
    assert 1.0 not in Bounds(0, 1, high_open=True) and 0.0 in Bounds(0, 1, high_open=True)
    assert float("nan") not in Bounds(low=0)


@pytest.mark.parametrize(
    "command",
    [["scenes"], ["explore"], ["demo"], ["extract"], ["retrieve"], ["viz"]]
    + [["eval", protocol] for protocol in ("linear", "knn", "seg", "recon", "invariance")],
)
def test_help_gives_every_option_default(command, capsys) -> None:
    """Every option that takes a value and has one by default says which in ``--help`` (in its
    text, or the formatter's "(default: ...)")."""
    from stellar.cli import COMMANDS, HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    importlib.import_module(COMMANDS[command[0]][0]).add_arguments(parser)
    if len(command) > 1:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[command[1]]
    valued = [
        a
        for a in parser._actions
        if a.option_strings and a.default not in (None, "==SUPPRESS==") and a.nargs != 0
    ]
    assert valued  # the test has something to check
    for action in valued:
        text = parser.formatter_class("stellar")._get_help_string(action) or ""
        assert action.help and "default" in text, (action.option_strings, action.help)
    with pytest.raises(SystemExit):  # and the command's own --help prints them
        console([*command, "--help"])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert any(f"(default: {a.default})" in out for a in valued)


def test_a_stopped_run_is_one_line_from_one_process(monkeypatch, capsys) -> None:
    import stellar.cli

    def stopped(argv):
        raise KeyboardInterrupt("stopped at step 3; continue with --resume")

    monkeypatch.setattr(stellar.cli, "main", stopped)
    for rank, lines in (("0", 1), ("1", 0)):  # torchrun numbers its processes in RANK
        monkeypatch.setenv("RANK", rank)
        assert console(["train"]) == 130
        assert len(capsys.readouterr().err.splitlines()) == lines
