"""The bad-input catalogue's shared fixtures.

Every case feeds the project one bad input (an image, a CSV, a dataset file, a run
folder, a hyperparameter, a filesystem fault or two processes at once) and checks
three things: the user sees a clear one-line message (or a correct result), no
traceback, and nothing is lost. Cases call the CLI's entry function in-process
(``cli(...)``) unless the process boundary is the point (signals, FIFOs, memory
caps), so the catalogue stays fast. The assertions are in ``catalogue.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from catalogue import CliResult, assert_clean_error

from digits import store
from digits.cli import main

__all__ = ["CliResult", "assert_clean_error"]


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """A fresh, empty runs dir for this test (``$DIGITS_RUNS_DIR``)."""
    root = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(root))
    return root


@pytest.fixture
def cli(capsys, runs):
    """Run ``digits ARGS...`` in-process; returns a CliResult."""

    def run(*args) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        captured = capsys.readouterr()
        return CliResult(int(code or 0), captured.out, captured.err)

    return run
