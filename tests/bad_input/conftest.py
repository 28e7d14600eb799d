"""The bad-input catalogue's shared helpers.

Every case feeds the project one bad input (an image, a CSV, a dataset file, a run
folder, a hyperparameter, a filesystem fault or two processes at once) and checks
three things: the user sees a clear one-line message (or a correct result), no
traceback, and nothing is lost. Cases call the CLI's entry function in-process
(``cli(...)``) unless the process boundary is the point (signals, FIFOs, memory
caps), so the catalogue stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from digits import store
from digits.cli import main

_ERROR_LINE = re.compile(r"digits[\w ]*: (\w+ )?error")


@dataclass
class CliResult:
    """What one in-process ``digits`` command did: exit status, stdout, stderr."""

    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one-line message on stderr, checked clean: ``digits: error: ...``
        (or argparse's ``digits train: error: ...`` after its usage line)."""
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.match(line)]
        assert len(errors) == 1, self.err
        return errors[0]


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


def assert_clean_error(result: CliResult, *fragments: str, code: int = 2) -> str:
    """``result`` failed with exit ``code`` and one clear line naming ``fragments``.

    Returns the line. Fragments are matched case-insensitively.
    """
    assert result.code == code, (result.code, result.err)
    line = result.error_line()
    for fragment in fragments:
        assert fragment.lower() in line.lower(), (fragment, line)
    return line
