"""AppTest tests of the Experiments page: it estimates a grid before it runs, runs
the sweep in the background through the training slots, shows each trial's
progress and then the charts of the results.

Sweeps here train a dense network (no conv blocks) of 30 or 100 units for one
epoch on 500 real MNIST images; each trial takes well under a second.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from digits import experiments, slots, store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
sys.path.insert(0, str(ROOT))
from test_app import figure, page, texts  # noqa: E402

TIMEOUT = 60
RUN_SECONDS = 60
JOB_KEY = "sweep-job"


@pytest.fixture
def at(tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception
    page(app, "experiments")
    return app


def tiny_grid(at: AppTest, hidden=((30,),)) -> None:
    at.multiselect(key="sweep-conv").set_value([()]).run()
    at.multiselect(key="sweep-hidden").set_value(list(hidden)).run()
    at.select_slider(key="sweep-size-mnist").set_value(500).run()
    at.session_state["sweep-jobs"] = 1  # one after another, in this process
    at.run()
    assert not at.exception, [e.message for e in at.exception]


def wait_for(at: AppTest, condition) -> None:
    deadline = time.monotonic() + RUN_SECONDS
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.3)
        at.run()
        assert not at.exception, [e.message for e in at.exception]
    assert condition()


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def test_the_grid_is_estimated_and_a_bad_one_refused(at):
    tiny_grid(at, hidden=[(30,), (100,)])
    shown = metrics(at)
    assert shown["Trials to run"] == "4"  # 2 widths x 2 seeds
    assert shown["Estimated time"].startswith("≈ ")
    assert not at.button(key="sweep-start").disabled
    at.multiselect(key="sweep-hidden").set_value([]).run()
    assert "no values for hidden_layer_sizes" in texts(at.error)
    assert at.button(key="sweep-start").disabled


def test_a_sweep_runs_in_the_background_and_charts_its_results(at):
    tiny_grid(at, hidden=[(30,), (100,)])
    at.button(key="sweep-start").click().run()
    job = at.session_state[JOB_KEY]
    # The user may leave the page while it runs.
    page(at, "draw")
    page(at, "experiments")
    assert at.session_state[JOB_KEY] is job
    wait_for(at, lambda: job.snapshot().finished)
    at.run()
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert [t["state"] for t in snap.trials] == ["done"] * 4
    table = experiments.read_results(job.sweep.results_path)
    assert len(table) == 4
    # The per-trial table, then the results' table, one row per trial.
    progress, trials = at.dataframe[0].value, at.dataframe[1].value
    assert list(progress["Progress"]) == [1.0] * 4
    assert sorted(trials["Run"]) == sorted(r["run"] for r in table)
    charts = [figure(c) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert titles == [
        "Accuracy against depth",
        "Accuracy against width",
        "Accuracy against training time (s)",
        "Accuracy against parameters",
        "Training loss, every trial",
    ]
    summary = experiments.summarise(table)
    width_chart = charts[1]["data"][0]
    assert sorted(width_chart["x"]) == [30, 100]
    by_width = {s["width"]: s for s in summary}
    for x, y, err in zip(
        width_chart["x"], width_chart["y"], width_chart["error_y"]["array"], strict=True
    ):
        # Configurations are compared on the validation images, not the test set.
        assert y == pytest.approx(by_width[x]["val_mean"])
        assert err == pytest.approx(by_width[x]["val_std"])
    assert len(charts[4]["data"]) == 4  # one loss curve per trial
    # Starting the same grid again has nothing left to do.
    assert "already done" in texts(at.caption)
    assert metrics(at)["Trials to run"] == "0"
    assert at.button(key="sweep-start").disabled


def test_a_sweep_waits_for_a_training_slot_and_can_be_stopped_there(at):
    tiny_grid(at)
    hold, release = threading.Event(), threading.Event()

    def occupy():
        with slots.shared().slot():
            hold.set()
            release.wait(RUN_SECONDS)

    holder = threading.Thread(target=occupy)
    holder.start()
    try:
        assert hold.wait(10)
        at.button(key="sweep-start").click().run()
        job = at.session_state[JOB_KEY]
        wait_for(at, lambda: job.snapshot().queue_position is not None)
        at.run()
        assert "waiting for a training slot" in at.progress[0].proto.text
        assert any("Waiting for a training slot" in i.value for i in at.info)
        at.button(key="sweep-stop").click().run()
        wait_for(at, lambda: job.snapshot().finished)
        assert job.snapshot().status == "stopped"
        assert experiments.read_results(job.sweep.results_path) == []
    finally:
        release.set()
        holder.join()


def test_saved_sweeps_are_shown_when_no_sweep_runs_here(at, mnist):
    sweep = experiments.plan(
        "cnn",
        {"conv_channels": [()], "hidden_layer_sizes": [(8,)]},
        dataset="mnist",
        seeds=(0,),
        train_size=300,
        params={"max_iter": 1},
        name="saved-sweep",
    )
    experiments.run_sweep(sweep, mnist, n_jobs=1)
    at.run()
    assert at.selectbox(key="sweep-saved").value.parent.name == "saved-sweep"
    assert len(at.get("plotly_chart")) == 5
