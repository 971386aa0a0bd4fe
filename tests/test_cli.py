"""The ``stellar`` console script: bad input in one line, the traceback only with -v."""

from __future__ import annotations

import pytest

from stellar.cli import console


def test_bad_input_is_one_line_on_stderr_with_exit_code_2(tmp_path, capsys) -> None:
    argv = ["eval", "knn", "--model", "stellar-tiny", "--train", str(tmp_path / "nowhere")]
    assert console([*argv, "--val", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stellar eval: error: expected --train to be a folder")
    assert "Traceback" not in err


def test_verbose_keeps_the_traceback(tmp_path) -> None:
    argv = ["-v", "eval", "knn", "--model", "stellar-tiny", "--train", str(tmp_path / "nowhere")]
    with pytest.raises(ValueError, match="expected --train to be a folder"):
        console([*argv, "--val", str(tmp_path)])
