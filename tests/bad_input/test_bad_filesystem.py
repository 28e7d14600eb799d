"""Filesystem faults: a runs folder that is a file, read-only or full, and a
process killed while it saves. Problems found before training say so in a second;
a save that fails leaves nothing half-written and no other run touched.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from catalogue import FAILURE, assert_clean_error

from digits import store

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--model", "mlp", "--dataset", "sklearn-digits", "--epochs", "1"]


def test_a_runs_folder_that_is_a_file_is_found_before_training(cli, runs):
    runs.parent.mkdir(parents=True, exist_ok=True)
    runs.write_text("not a folder")
    start = time.perf_counter()
    line = assert_clean_error(cli(*TRAIN), str(runs), "is a file", code=FAILURE)
    assert time.perf_counter() - start < 5
    assert "DIGITS_RUNS_DIR" in line
    assert runs.read_text() == "not a folder"


def test_an_out_folder_under_a_file_is_found_before_training(cli, runs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli(*TRAIN, "--out", blocker / "run")
    assert_clean_error(result, str(blocker), code=FAILURE)
    assert blocker.read_text() == "x"


def test_a_full_disk_is_found_before_training(cli, runs, monkeypatch):
    real = shutil.disk_usage

    def nearly_full(path):
        usage = real(path)
        return usage._replace(free=10 << 20)

    monkeypatch.setattr(store.shutil, "disk_usage", nearly_full)
    line = assert_clean_error(cli(*TRAIN), "MB free", str(runs), code=FAILURE)
    assert "Free some space" in line
    assert not any(runs.iterdir())


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "No space left"),
        (errno.EDQUOT, "quota"),
        (errno.EROFS, "Read-only"),
        (errno.EACCES, "Permission denied"),
    ],
)
def test_a_save_that_fails_leaves_nothing_and_loses_nothing(
    cli, runs, monkeypatch, code, words
):
    """The disk fills up (or turns read-only) while the weights are written."""
    assert cli(*TRAIN, "--name", "earlier").code == 0
    earlier = store.open_run("earlier")
    before = {p.name: p.read_bytes() for p in earlier.path.iterdir()}

    def failing_savez(file, *args, **kwargs):
        Path(file).write_bytes(b"PK partial")  # a part was written, then:
        raise OSError(code, os.strerror(code), str(file))

    monkeypatch.setattr(np, "savez", failing_savez)
    line = assert_clean_error(
        cli(*TRAIN, "--name", "doomed"), "Nothing was saved", code=FAILURE
    )
    assert words.lower() in line.lower()
    assert sorted(p.name for p in runs.iterdir()) == ["earlier"]  # no .tmp- left
    assert {p.name: p.read_bytes() for p in earlier.path.iterdir()} == before


def _without_root_powers() -> list[str]:
    """A command prefix that runs a child without root's power to write anywhere
    (util-linux's setpriv drops CAP_DAC_OVERRIDE), so a read-only folder is
    read-only to it; nothing is needed when we are not root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_read_only_runs_folder_is_found_before_training(runs):
    runs.mkdir(parents=True)
    runs.chmod(0o555)
    try:
        result = subprocess.run(
            [*_without_root_powers(), sys.executable, "-m", "digits", *TRAIN],
            cwd=ROOT,
            env={**os.environ, store.RUNS_DIR_ENV: str(runs)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        runs.chmod(0o755)
    assert result.returncode == FAILURE, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("digits: error: Cannot write to the runs folder")
    assert "Permission denied" in lines[-1]
    assert "Training" not in result.stderr  # refused before training began
    assert list(runs.iterdir()) == []


SLOW_SAVE = textwrap.dedent(
    """
    import sys, time
    from digits import registry, store, training
    from digits.data import load_dataset

    mlp = registry.MODELS["mlp"]
    real_save = mlp.save

    def slow_save(model, folder):
        real_save(model, folder)
        print("SAVING", flush=True)
        time.sleep(60)  # killed here: files written, run not yet in place

    object.__setattr__(mlp, "save", slow_save)
    ds = load_dataset("sklearn-digits")
    if sys.argv[1] == "--out":  # replace the run "kept" in place
        out = store.runs_dir() / "kept"
        training.train_run("mlp", ds, params={"max_iter": 1}, out=out, overwrite=True)
    else:
        training.train_run("mlp", ds, params={"max_iter": 1}, name=sys.argv[1])
    """
)


@pytest.mark.parametrize("target", ["new-name", "--out"])
def test_sigkill_while_saving_leaves_no_half_run(runs, tmp_path, target):
    """A process killed mid-save leaves no run that lists or loads half-written,
    and an existing run it was about to replace (--out --overwrite) is intact."""
    assert (
        subprocess.run(
            [sys.executable, "-m", "digits", *TRAIN, "--name", "kept"],
            cwd=ROOT,
            env={**os.environ, store.RUNS_DIR_ENV: str(runs)},
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )
    kept = {p.name: p.read_bytes() for p in (runs / "kept").iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, target],
        cwd=ROOT,
        env={**os.environ, store.RUNS_DIR_ENV: str(runs)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "SAVING"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    found, broken = store.list_runs(include_pretrained=False)
    assert [r.name for r in found] == ["kept"] and broken == []
    assert {p.name: p.read_bytes() for p in (runs / "kept").iterdir()} == kept
    hidden = [p.name for p in runs.iterdir() if p.name.startswith(".")]
    assert all(name.startswith(store.TMP_PREFIX) for name in hidden)
