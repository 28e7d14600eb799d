"""Crash safety: the server is killed mid-training, a save is killed midway, and
after a restart the saved runs are intact, nothing half-written shows, and every
page opens cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from appdriver import (
    ROOT,
    Server,
    nav_link,
    open_page,
    slide,
    start_training,
    title,
    visit_every_page,
    wait_curve_points,
)
from playwright.sync_api import expect

from digits import store

pytestmark = pytest.mark.e2e

TRAIN = ["--model", "mlp", "--hidden-layer-sizes", "32", "--max-iter", "3"]
TRAIN += ["--train-size", "2000"]
# `digits train`, stopped for good once the model's files are written into the
# store's temporary folder and before its metadata is: where a kill hurts most.
SAVE_AND_HANG = """
import sys, time
from digits import cli, store
def hang(*args):
    print("saving", flush=True)
    time.sleep(600)
store._file_records = hang  # the files' hashes, for the metadata written next
cli.main(sys.argv[1:])
"""
SUBPROCESS_SECONDS = 120


def digits_train(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "digits", "train", *TRAIN, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_SECONDS,
        check=True,
    )


def kill_mid_save(env, name: str) -> None:
    """Run ``digits train`` and SIGKILL it while it saves the run."""
    process = subprocess.Popen(
        [sys.executable, "-c", SAVE_AND_HANG, "train", *TRAIN, "--name", name],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    saving = threading.Event()
    reader = threading.Thread(
        target=lambda: saving.set() if process.stdout.readline() else None
    )
    reader.start()
    try:
        assert saving.wait(SUBPROCESS_SECONDS), "digits train never got to saving"
    finally:
        process.kill()  # SIGKILL: no cleanup runs
        process.wait(timeout=30)
        reader.join(timeout=30)
        process.stdout.close()


def test_kill_mid_training_and_mid_save_then_restart(tmp_path, new_page, mnist):
    runs_dir = tmp_path / "runs"
    env = {**os.environ, store.RUNS_DIR_ENV: str(runs_dir)}
    digits_train(env, "--name", "before-crash")
    before = store.open_run(runs_dir / "before-crash", allow_paths=True)
    proba = store.predict_proba_full(store.load_model(before), mnist.x_test, 10)
    kill_mid_save(env, "half-written")

    server = Server(runs_dir, tmp_path / "streamlit.log").start()
    try:
        page = new_page()
        open_page(page, f"{server.url}/train", "Train")
        slide(page, "Training images", "End")
        start_training(page)
        wait_curve_points(page, 2)  # training, and far from done
    finally:
        server.kill(signal.SIGKILL)

    runs, broken = store.list_runs(runs_dir)
    assert [run.name for run in runs if not run.pretrained] == ["before-crash"]
    assert broken == []
    leftovers = [p.name for p in runs_dir.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the save was not interrupted"  # hidden, so never listed

    server = Server(runs_dir, tmp_path / "streamlit-restarted.log").start()
    try:
        page = new_page()
        open_page(page, server.url, "Handwritten digits")
        expect(page.get_by_text("is damaged, so it is left out")).to_have_count(0)
        expect(page.locator("[data-testid=stDataFrame]")).to_be_visible()
        visit_every_page(page)
        nav_link(page, "Evaluate").click()
        title(page, "Evaluate")
        accuracy = page.locator("[data-testid=stMetric]").filter(
            has_text="Test accuracy"
        )
        expect(accuracy.locator("[data-testid=stMetricValue]")).to_have_text(
            f"{before.test_accuracy:.2%}"
        )
    finally:
        server.kill()
    again = store.open_run(runs_dir / "before-crash", allow_paths=True)
    assert again.meta == before.meta
    assert np.array_equal(
        store.predict_proba_full(store.load_model(again), mnist.x_test, 10), proba
    )
