"""The command line never shows a traceback: bad usage exits 2 with argparse's
message, an invalid value exits 2 with one line, a command that cannot be carried
out (a run that does not exist) and an unexpected error (a bug, or memory running
out) exit 1 with one line, and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from catalogue import FAILURE, USAGE, assert_clean_error

from digits import cli as cli_module
from digits import store

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["fly"], id="unknown-command"),
        pytest.param(["predict"], id="predict-without-run"),
        pytest.param(["predict", "default"], id="predict-without-images"),
        pytest.param(["train", "--model", "svm"], id="unknown-model"),
        pytest.param(["train", "--train-size", "many"], id="train-size-text"),
        pytest.param(["train", "--preset", "huge"], id="unknown-preset"),
        pytest.param(["train", "--name", "a", "--out", "b"], id="name-and-out"),
        pytest.param(["sweep", "--n-jobs", "two"], id="n-jobs-text"),
        pytest.param(["runs", "--colour"], id="unknown-flag"),
    ],
)
def test_bad_usage_exits_2_with_argparse_message(cli, args):
    result = cli(*args)
    assert result.code == USAGE
    assert "Traceback" not in result.err
    assert "usage: digits" in result.err
    assert "error:" in result.err.splitlines()[-1]


BOOM = {
    "runtime-error": RuntimeError("something nobody expected"),
    "key-error": KeyError("missing"),
    "memory-error": MemoryError(),
    "recursion-error": RecursionError("maximum recursion depth exceeded"),
}


@pytest.mark.parametrize("name", sorted(BOOM))
def test_an_unexpected_error_is_one_line_and_exit_1(cli, monkeypatch, name):
    def boom(*args, **kwargs):
        raise BOOM[name]

    monkeypatch.setattr(store, "list_runs", boom)
    result = cli("runs")
    line = assert_clean_error(result, code=FAILURE)
    if name == "memory-error":
        assert "out of memory" in line
    else:
        assert "unexpected error" in line and "--debug" in line


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(cli, monkeypatch, where):
    def boom(*args, **kwargs):
        raise RuntimeError("the cause")

    monkeypatch.setattr(store, "list_runs", boom)
    args = ["--debug", "runs"] if where == "before" else ["runs", "--debug"]
    result = cli(*args)
    assert result.code == 1
    assert "Traceback" in result.err and "RuntimeError: the cause" in result.err


def test_ctrl_c_outside_training_exits_130(cli, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "list_runs", interrupted)
    result = cli("runs")
    assert result.code == cli_module.EXIT_INTERRUPTED
    assert "Traceback" not in result.err and "interrupted" in result.err


@pytest.mark.parametrize(
    "args, fragments, code",
    [
        pytest.param(
            ["evaluate", "nope"], ["No run called 'nope'"], FAILURE, id="no-run"
        ),
        pytest.param(
            ["evaluate", "/etc"], ["not a complete run"], FAILURE, id="system-dir"
        ),
        pytest.param(
            ["evaluate", "default", "--dataset", "x"], ["Unknown dataset"], USAGE
        ),
        pytest.param(
            ["train", "--model", "mlp", "--conv-channels", "8"],
            ["does not apply"],
            USAGE,
            id="flag-of-other-model",
        ),
        pytest.param(
            ["train", "--name", "..."], ["no usable characters"], USAGE, id="name"
        ),
        pytest.param(
            ["train", "--name", "default"], ["reserved"], USAGE, id="reserved-name"
        ),
        pytest.param(["convert", "default"], ["shipped"], USAGE, id="convert-shipped"),
    ],
)
def test_bad_values_exit_2_and_failures_1_with_one_line(cli, args, fragments, code):
    assert_clean_error(cli(*args), *fragments, code=code)


def test_a_real_process_shows_no_traceback_for_an_unexpected_error(tmp_path):
    """Across the process boundary: a bug inside a command (here, a dataset
    module that fails to import) prints one line, exit 1."""
    fake = tmp_path / "site"
    (fake / "sklearn").mkdir(parents=True)
    (fake / "sklearn" / "__init__.py").write_text("raise ImportError('broken')\n")
    env = {
        **os.environ,
        "PYTHONPATH": f"{fake}{os.pathsep}{ROOT}",
        store.RUNS_DIR_ENV: str(tmp_path / "runs"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "digits", "evaluate", "default", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("digits: unexpected error: ImportError: broken")
    )
