"""The command line's conventions: --version, exit statuses (2 bad usage, 1 a
failure), --x/--no-x switches, defaults and examples in every help, progress and
logs on stderr with results on stdout, and shell completion scripts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import digits
from digits import cli, data, registry, store
from digits.cli import EXIT_FAILURE, EXIT_USAGE, build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(root))
    return root


def run(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    """``digits ARGS`` in a real process: (status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "digits", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


# -- --version --------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"digits {digits.__version__}\n"


# -- exit statuses ----------------------------------------------------------------


def in_process(capsys, *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return int(code), capsys.readouterr().err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


MLP = ["train", "--model", "mlp", "--dataset", "sklearn-digits"]
USAGE = [
    pytest.param(["fly"], id="unknown-command"),
    pytest.param(["train", "--model", "svm"], id="invalid-choice"),
    pytest.param(["train", "--no-augment", "writers"], id="no-x-takes-no-value"),
    pytest.param(["train", "--augment", "--no-augment"], id="augment-and-not"),
    pytest.param([*MLP, "--alpha", "lots"], id="invalid-value"),
    pytest.param([*MLP, "--conv-channels", "8"], id="flag-of-another-model"),
    pytest.param(["train", "--dataset", "nope"], id="unknown-dataset"),
    pytest.param(["sweep", "--dataset", "nope"], id="unknown-dataset-sweep"),
    pytest.param(["runs", "--delete", "default", "--yes"], id="shipped-model"),
    pytest.param(["evaluate", "default", "--dataset", "x"], id="evaluate-dataset"),
]


@pytest.mark.parametrize("args", USAGE)
def test_bad_usage_exits_2(runs, capsys, args):
    code, err = in_process(capsys, *args)
    assert code == EXIT_USAGE, err
    one_error_line(err)


def test_failures_exit_1(runs, tmp_path, capsys):
    """A valid command that cannot be carried out: a run that does not exist, a
    file that cannot be read, a dataset file that is not CSV, training that
    diverges."""
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"\x00\x01 not a table")
    cases = {
        "No run called 'ghost'": ["evaluate", "ghost"],
        "missing.png": ["predict", "default", str(tmp_path / "missing.png")],
        str(bad_csv): ["train", "--dataset", str(bad_csv)],
        "diverged": [*MLP, "--solver", "sgd", "--learning-rate-init", "1e9"],
    }
    for fragment, args in cases.items():
        code, err = in_process(capsys, *args)
        assert code == EXIT_FAILURE, (args, err)
        assert fragment in one_error_line(err)


def test_exit_status_draws_the_line_by_error_class():
    from digits.errors import (
        ConfigError,
        DataError,
        ModelFileError,
        TrainingDiverged,
    )

    assert cli.exit_status(ConfigError("x")) == EXIT_USAGE
    for err in (DataError(), ModelFileError(), TrainingDiverged("x"), OSError()):
        assert cli.exit_status(err) == EXIT_FAILURE


# -- switches ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], {}),
        (["--augment"], {"augment": True}),
        (["--augment", "shift"], {"augment": True}),
        (["--augment", "writers"], {"augment": "writers"}),
        (["--augment", "WRITERS"], {"augment": "writers"}),
        (["--augment", "true"], {"augment": True}),  # the older spelling
        (["--no-augment"], {"augment": False}),
        (["--early-stopping"], {"early_stopping": True}),
        (["--no-early-stopping"], {"early_stopping": False}),
    ],
)
def test_switches(flags, expected):
    args = build_parser().parse_args(["train", *flags])
    assert cli._hyperparameters(args, registry.get("cnn")) == expected


def test_a_bad_augment_style_is_bad_usage(runs, capsys):
    code, err = in_process(capsys, "train", "--augment", "sideways")
    assert code == EXIT_USAGE and "augment" in one_error_line(err)


# -- help -------------------------------------------------------------------------


def test_every_command_ends_its_help_with_two_or_three_examples():
    for name, parser in commands().items():
        text = parser.format_help().rstrip("\n")
        tail = text.split("\nexamples:\n")
        assert len(tail) == 2, f"'digits {name} --help' has no examples"
        examples = tail[1].splitlines()
        assert 2 <= len(examples) <= 4, (name, examples)
        first_words = {line.split()[0] for line in examples}
        assert first_words <= {"digits", "source"}, (name, examples)


def test_every_option_shows_its_default():
    for name, parser in commands().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.required:
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            help_text = formatter._get_help_string(action)
            assert "default" in help_text, (name, action.option_strings)


def test_hyperparameter_defaults_are_each_kinds():
    help_text = commands()["train"].format_help()
    assert "(default:\n" in help_text or "(default:" in help_text
    flat = " ".join(help_text.split())
    assert "(default: cnn, dense 64; mlp 200)" in flat  # --batch-size
    assert "--no-early-stopping" in flat and "--no-augment" in flat


# -- streams ----------------------------------------------------------------------


def test_verbose_logs_downloads_and_fallbacks_on_stderr(
    tmp_path, monkeypatch, runs, capsys
):
    """-v: each mirror tried, and the one that failed, as 'digits: note:' lines
    on stderr; stdout still holds only the result."""
    here = (data.data_dir() / "mnist").resolve()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    mirrors = [(tmp_path / "nowhere").as_uri() + "/", here.as_uri() + "/"]
    monkeypatch.setitem(data.MIRRORS, "mnist", mirrors)
    assert main(["-v", "evaluate", "default-mlp", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dataset"] == "mnist"
    notes = [line for line in captured.err.splitlines() if "digits: note:" in line]
    assert any("nowhere" in line and "failed" in line for line in notes), notes
    assert sum("Downloading" in line for line in notes) == 8  # 4 files, 2 mirrors

    # Without -v, the same (now local) files give no notes.
    assert main(["evaluate", "default-mlp", "--json"]) == 0
    assert "digits: note:" not in capsys.readouterr().err


def test_verbose_logs_clean_ups(runs, capsys):
    """-v: a half-written run abandoned long ago is removed when a run is saved,
    and a note says so; the result line stays on stdout."""
    abandoned = runs / f"{store.TMP_PREFIX}crashed"
    abandoned.mkdir(parents=True)
    old = abandoned.stat().st_mtime - store.ABANDONED_SECONDS - 60
    os.utime(abandoned, (old, old))
    assert main(["-v", *MLP, "--epochs", "1", "--name", "tidy"]) == 0
    captured = capsys.readouterr()
    assert not abandoned.exists()
    assert f"digits: note: Removed {abandoned}, a run left half-written" in (
        captured.err
    )
    assert "Saved run tidy" in captured.out and "note:" not in captured.out


def test_train_progress_on_stderr_result_on_stdout(tmp_path):
    env = {store.RUNS_DIR_ENV: str(tmp_path / "runs")}
    code, out, err = run(*MLP, "--epochs", "2", "--json", env=env)
    assert code == 0, err
    assert json.loads(out)["epochs"] == 2  # stdout: one JSON object only
    assert "epoch 2/2" in err and "Training" in err


# -- completion -------------------------------------------------------------------


def test_bash_completion_script_registers_and_completes():
    code, script, err = run("completion", "bash")
    assert code == 0, err
    probe = (
        "source /dev/stdin; complete -p digits; COMP_WORDS=(digits tr); "
        'COMP_CWORD=1; _shtab_digits; echo "${COMPREPLY[@]}"; '
        'COMP_WORDS=(digits train --model ""); COMP_CWORD=3; _shtab_digits; '
        'echo "${COMPREPLY[@]}"'
    )
    shell = subprocess.run(
        ["bash", "-c", probe], input=script, capture_output=True, text=True
    )
    registered, commands_, kinds = shell.stdout.splitlines()[-3:]
    assert registered.startswith("complete ") and registered.endswith(" digits")
    assert commands_ == "train"
    assert kinds.split() == sorted(registry.MODELS)


def test_zsh_completion_script():
    code, script, _ = run("completion", "zsh")
    assert code == 0 and script.startswith("#compdef digits")
    assert "--tensorboard" in script and "--no-augment" in script


def test_completion_for_another_shell_is_bad_usage():
    code, out, err = run("completion", "fish")
    assert code == EXIT_USAGE and out == "" and "invalid choice" in err
