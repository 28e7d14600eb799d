"""AppTest tests of the dashboard: every page runs, and does what its issue says.

The app runs in this process (streamlit.testing.v1), against the real MNIST files
($DIGITS_DATA_DIR) and a runs directory of this module's own, holding two small
models trained here in a few seconds (plus the shipped defaults, if installed).
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sklearn.metrics import confusion_matrix
from streamlit.testing.v1 import AppTest

from digits import data, metrics, registry, store
from digits.training_job import TrainingJob

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
# ui.py (the pages' helper module) sits beside app.py, outside the package; a
# bare `pytest` does not put the repository root on sys.path.
sys.path.insert(0, str(ROOT))
import ui  # noqa: E402

TIMEOUT = 60  # seconds for one script run (the first loads MNIST and sklearn)
RUN_SECONDS = 30  # how long to keep rerunning while a training thread works


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, mnist):
    """A runs dir with a tiny CNN and a small MLP trained on MNIST subsets."""
    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv(store.RUNS_DIR_ENV, str(root))
    x, y = mnist.x_train[:2000], mnist.y_train[:2000]
    tiny = {
        "cnn": {"conv_channels": (4,), "hidden_layer_sizes": (16,), "max_iter": 1},
        "mlp": {"hidden_layer_sizes": (32,), "max_iter": 5},
    }
    for kind, params in tiny.items():
        model = registry.get(kind).build(**params).fit(x, y)
        proba = store.predict_proba_full(model, mnist.x_test, 10)
        store.save_run(
            model,
            kind=kind,
            dataset=mnist,
            n_train=len(x),
            test=metrics.report(mnist.y_test, proba, mnist.class_names),
            name=f"tiny-{kind}",
        )
    yield root
    mp.undo()


@pytest.fixture
def at(runs_dir) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception
    return app


def page(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"pages/{name}.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


def figure(chart) -> dict:
    """The Plotly figure of an st.plotly_chart element, with arrays decoded."""

    def decode(value):
        if isinstance(value, dict) and "bdata" in value:
            shape = [int(s) for s in str(value.get("shape", "-1")).split(",")]
            raw = base64.b64decode(value["bdata"])
            return np.frombuffer(raw, dtype=value["dtype"]).reshape(shape)
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(json.loads(chart.proto.spec))


def canvas_drawing(lines, width: int = 20) -> dict:
    """The value streamlit-drawable-canvas 0.13 sends back: its "drawing" holds
    the fabric.js JSON ("raw") and the canvas as a PNG data URL ("data")."""
    image = Image.new("RGBA", (280, 280), (0, 0, 0, 255))
    pen = ImageDraw.Draw(image)
    for line in lines:
        pen.line(line, fill=(255, 255, 255, 255), width=width, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"drawing": {"raw": {"objects": [{"type": "path"}]}, "data": url}}


# -- Home ----------------------------------------------------------------------------


def test_home_shows_mnist_samples_and_models(at):
    metric = {m.label: m.value for m in at.metric}
    assert metric["Training images"] == "60,000"
    assert metric["Test images"] == "10,000"
    assert metric["Image size"] == "28x28"
    grid = figure(at.get("plotly_chart")[0])["data"][0]
    assert grid["type"] == "image"
    table = at.dataframe[0].value
    assert {"tiny-cnn", "tiny-mlp"} <= set(table["Model"])
    accuracy = dict(zip(table["Model"], table["Test accuracy"], strict=True))
    assert accuracy["tiny-mlp"] == pytest.approx(
        store.open_run("tiny-mlp").test_accuracy
    )


def test_home_switches_dataset_and_every_page_follows(at):
    at.selectbox(key=ui.DATASET_KEY).select("sklearn-digits").run()
    assert {m.label: m.value for m in at.metric}["Image size"] == "8x8"
    # The tiny models were trained on MNIST: Evaluate has nothing for 8x8 digits.
    page(at, "evaluate")
    assert "No model has been trained on sklearn digits" in texts(at.info)


def test_home_csv_upload_and_a_corrupt_one(at, tmp_path):
    at.selectbox(key=ui.DATASET_KEY).select(ui.CSV_CHOICE).run()
    rng = np.random.default_rng(0)
    rows = ["label," + ",".join(f"pixel{i}" for i in range(16))]
    for n in range(60):
        rows.append(f"{n % 3}," + ",".join(map(str, rng.integers(0, 256, 16))))
    at.file_uploader[0].upload("tiny.csv", "\n".join(rows).encode(), "text/csv")
    at.run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["Image size"] == "4x4"

    at.file_uploader[0].set_value(("broken.csv", b"label,a,b\n1,2,x\n", "text/csv"))
    at.run()
    assert not at.exception
    assert "broken.csv" in texts(at.error)


def test_failed_download_falls_back_to_sklearn_digits(at, tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))  # no MNIST files here
    monkeypatch.setitem(data.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    fresh = AppTest.from_file(APP, default_timeout=TIMEOUT)
    fresh.run()
    assert not fresh.exception
    # One line says what happened; the download's errors wait in "Details".
    [notice] = fresh.warning
    assert notice.value == "MNIST could not be downloaded: using sklearn digits (8x8)."
    details = next(e for e in fresh.expander if e.label == "Details")
    assert "127.0.0.1:9" in details.code[0].value
    assert {m.label: m.value for m in fresh.metric}["Image size"] == "8x8"
    # The heading names what is shown, and the shipped MNIST models stay listed.
    assert fresh.title[0].value == ui.DATASET_TITLES["sklearn-digits"]
    models = set(fresh.dataframe[0].value["Model"])
    assert {"default-cnn", "default-mlp"} <= models
    # Every page says so in one line, and Train's defaults fit 8x8 images.
    for name in ("train", "evaluate", "inspect", "experiments"):
        page(fresh, name)
        assert [w.value for w in fresh.warning] == [notice.value], name
    page(fresh, "train")
    assert not fresh.error
    assert not next(b for b in fresh.button if b.label == "Start training").disabled
    # Evaluate still shows the shipped models' saved training curves.
    page(fresh, "evaluate")
    chosen = fresh.multiselect(key="evaluate-curves").value
    assert set(chosen) == {"default-cnn", "default-mlp"}
    names = {trace["name"] for trace in figure(fresh.get("plotly_chart")[0])["data"]}
    assert "default-cnn · training images" in names


@pytest.mark.parametrize("choice", ["mnist", "fashion-mnist", "sklearn-digits"])
def test_home_heading_follows_the_dataset(at, choice):
    at.selectbox(key=ui.DATASET_KEY).select(choice).run()
    assert at.title[0].value == ui.DATASET_TITLES[choice]
    line = f"Dataset: **{ui.DATASET_LABELS[choice]}**, chosen on Home"
    assert line in texts(at.caption)


def test_the_first_cnn_preset_of_train_fits_8x8_and_28x28_images():
    """The Train page's first preset builds for the offline 8x8 digits as well
    as for MNIST (the others are for 28x28 images only)."""
    spec = registry.get("cnn")
    for side in (8, 28):
        model = spec.build("quick", max_iter=1)
        x = np.zeros((4, side, side), np.uint8)
        model.partial_fit(x, [0, 1, 2, 3], classes=np.arange(10))
        assert model.predict_proba(x).shape == (4, 10)


# -- Home: managing runs -------------------------------------------------------------


@pytest.fixture
def manage(tmp_path, monkeypatch) -> AppTest:
    """Home over a runs dir of its own: run "mine" (a small MLP on the 8x8
    digits) and two trials of a sweep "sw", beside the shipped models."""
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    small = data.load_dataset("sklearn-digits")
    model = registry.get("mlp").build(hidden_layer_sizes=(8,), max_iter=2)
    model.fit(small.x_train, small.y_train)
    store.save_run(model, kind="mlp", dataset=small, name="mine")
    for seed in (0, 1):
        store.save_run(
            model,
            kind="mlp",
            dataset=small,
            name=f"sw-h8-s{seed}",
            command=f"sweep sw trial k{seed}",
        )
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception
    return app


def choose_run(at: AppTest, name: str) -> None:
    at.selectbox(key="home-manage-run").select(name).run()
    assert not at.exception


def test_manage_rename_a_run(manage):
    choose_run(manage, "mine")
    manage.text_input(key="home-new-name-mine").input("my first model").run()
    manage.button(key="home-rename").click().run()
    assert not manage.exception
    assert texts(manage.success) == "Renamed mine to my-first-model."
    assert store.open_run("my-first-model")
    assert not (store.runs_dir() / "mine").exists()
    assert "my-first-model" in set(manage.dataframe[0].value["Model"])
    assert manage.selectbox(key="home-manage-run").value == "my-first-model"


def test_manage_a_bad_name_is_explained_and_nothing_changes(manage):
    choose_run(manage, "mine")
    manage.text_input(key="home-new-name-mine").input("sw-h8-s0").run()
    manage.button(key="home-rename").click().run()
    assert "'sw-h8-s0' already exists" in texts(manage.error)
    assert store.open_run("mine") and store.open_run("sw-h8-s0").sweep == "sw"


def test_manage_tag_a_run(manage):
    choose_run(manage, "mine")
    manage.text_input(key="home-tags-mine").input("baseline, for class").run()
    manage.button(key="home-tag").click().run()
    assert texts(manage.success) == "mine now has tags: baseline, for class."
    assert store.open_run("mine").tags == ("baseline", "for class")
    table = manage.dataframe[0].value
    tags = dict(zip(table["Model"], table["Tags"], strict=True))
    assert tags["mine"] == "baseline, for class"
    # The picker's label shows them too.
    assert "baseline, for class" in ui.run_label(store.open_run("mine"))


def test_manage_delete_needs_the_confirmation(manage):
    choose_run(manage, "mine")
    delete = manage.button(key="home-delete")
    assert delete.disabled  # nothing happens without saying yes first
    manage.checkbox(key="home-delete-sure-mine").check().run()
    assert not manage.button(key="home-delete").disabled
    assert store.open_run("mine")  # ticking the box alone deletes nothing
    manage.button(key="home-delete").click().run()
    assert not manage.exception
    assert texts(manage.success) == "Deleted mine."
    assert not (store.runs_dir() / "mine").exists()
    assert "mine" not in set(manage.dataframe[0].value["Model"])
    assert manage.selectbox(key="home-manage-run").value != "mine"


@pytest.mark.parametrize("name", ["default-cnn", "default-mlp"])
def test_manage_shipped_models_cannot_be_changed(manage, name):
    choose_run(manage, name)
    for key in ("home-rename", "home-tag", "home-delete"):
        assert manage.button(key=key).disabled, key
    assert manage.checkbox(key=f"home-delete-sure-{name}").disabled
    assert "cannot be renamed, tagged or deleted" in texts(manage.caption)


def test_sweep_trials_are_hidden_from_pickers_until_asked_for(manage):
    def label(name):
        return ui.run_label(store.open_run(name))

    picker = manage.selectbox(key="home-manage-run")
    assert picker.options == [label(n) for n in ("mine", "default-cnn", "default-mlp")]
    assert set(manage.dataframe[0].value["Model"]) == {
        "mine", "default-cnn", "default-mlp"
    }  # fmt: skip
    manage.toggle(key="home-manage-run-sweeps").set_value(True).run()
    options = manage.selectbox(key="home-manage-run").options
    # The sweep's trials come after the other runs, together, under its name.
    assert options[:3] == picker.options
    assert sorted(options[3:]) == [label("sw-h8-s0"), label("sw-h8-s1")]
    assert all(option.startswith("sw ▸ h8-s") for option in options[3:])
    manage.toggle(key="home-models-sweeps").set_value(True).run()
    table = manage.dataframe[0].value
    sweeps = dict(zip(table["Model"], table["Sweep"], strict=True))
    assert sweeps["sw-h8-s0"] == sweeps["sw-h8-s1"] == "sw"
    assert sweeps["mine"] == ""


def test_group_sweeps_keeps_own_runs_first_and_each_sweep_together(tmp_path):
    def run(name, command=None):
        meta = {"command": command, "kind": "mlp"}
        return store.Run(tmp_path / name, meta)

    runs = [
        run("b1", "sweep b trial 1"),
        run("mine"),
        run("a1", "sweep a trial 1"),
        run("b2", "sweep b trial 2"),
        run("other", "python -m digits train"),
        run("a2", "sweep a trial 2"),
    ]
    grouped = [r.name for r in ui.group_sweeps(runs)]
    assert grouped == ["mine", "other", "a1", "a2", "b1", "b2"]


# -- Train ---------------------------------------------------------------------------


def test_train_sliders_update_the_estimate(at):
    page(at, "train")
    # The page starts at the demo preset; these settings are the quick one's.
    at.selectbox(key="train-preset-cnn").set_value("quick").run()
    before = {m.label: m.value for m in at.metric}["Parameters"]
    at.slider(key="train-cnn-quick-hidden_layer_sizes-n").set_value(2).run()
    at.select_slider(key="train-cnn-quick-conv_channels-0").set_value(16).run()
    assert not at.exception
    after = {m.label: m.value for m in at.metric}["Parameters"]
    assert after != before
    params = registry.get("cnn").params(
        "quick", conv_channels=(16, 16), hidden_layer_sizes=(64, 64)
    )
    model = registry.get("cnn").build(**params)
    model.partial_fit(np.zeros((2, 28, 28), np.uint8), [0, 1], classes=np.arange(10))
    assert after == f"{model.n_params():,}"


def test_train_start_and_stop(at):
    page(at, "train")
    at.selectbox(key="train-preset-cnn").set_value("quick").run()
    at.select_slider(key="train-size-mnist").set_value(500).run()
    at.slider(key="train-cnn-quick-max_iter").set_value(50).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    job = at.session_state[ui.JOB_KEY]
    deadline = time.monotonic() + RUN_SECONDS
    while len(job.snapshot().points) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
        assert not at.exception
    assert job.snapshot().status == "running"
    assert at.progress[0].value > 0
    # Switching pages neither stops the job nor loses it.
    page(at, "draw")
    assert job.snapshot().status == "running"
    page(at, "train")
    assert at.session_state[ui.JOB_KEY] is job
    at.button(key="stop").click().run()
    while not job.snapshot().finished and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
        assert not at.exception
    at.run()  # the page as it is once the job has ended
    snap = job.snapshot()
    assert snap.status == "stopped", snap.error
    assert snap.stop_latency < 1.0
    assert "Saved as" in texts(at.success)
    run = store.open_run(snap.run.name)
    assert run.meta["stopped"] == "interrupted"
    assert run.meta["dataset"]["n_train"] == 500
    # The new run is offered first on Evaluate.
    page(at, "evaluate")
    assert at.selectbox(key="evaluate-model").value == run.name


def test_two_sessions_share_the_training_slot_without_mixing_state(runs_dir):
    # Two browser sessions are two AppTests: each has its own session state. On
    # this machine one model trains at a time; the second waits, visibly.
    users = [AppTest.from_file(APP, default_timeout=TIMEOUT) for _ in range(2)]
    for user, size in zip(users, (500, 1000), strict=True):
        user.run()
        page(user, "train")
        user.selectbox(key="train-preset-cnn").set_value("quick").run()
        user.select_slider(key="train-size-mnist").set_value(size).run()
        user.slider(key="train-cnn-quick-max_iter").set_value(50).run()
        next(b for b in user.button if b.label == "Start training").click().run()
    jobs = [user.session_state[ui.JOB_KEY] for user in users]
    assert jobs[0] is not jobs[1]

    def wait(condition) -> None:
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline and not condition():
            time.sleep(0.2)
        assert condition()

    wait(lambda: jobs[0].snapshot().points)
    assert [job.snapshot().status for job in jobs] == ["running", "queued"]
    users[1].run()
    waiting = next(i.value for i in users[1].info if "training slot" in i.value)
    assert "no other job(s) wait ahead" in waiting
    # The wait comes from the first job's expected time (the epoch estimate).
    assert "It should start in about" in waiting
    assert not users[1].button(key="stop").disabled  # may leave the queue
    users[0].button(key="stop").click().run()
    wait(lambda: jobs[1].snapshot().points)
    users[1].button(key="stop").click().run()
    wait(lambda: all(job.snapshot().finished for job in jobs))
    runs = [job.snapshot().run for job in jobs]
    assert [job.snapshot().status for job in jobs] == ["stopped", "stopped"]
    assert runs[0].name != runs[1].name
    sizes = [store.open_run(r.name).meta["dataset"]["n_train"] for r in runs]
    assert sizes == [500, 1000]


# Overflow warnings are how divergence shows inside the engine.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_train_shows_divergence_as_an_error(at, mnist):
    job = TrainingJob(
        "dense",
        mnist,
        {"hidden_layer_sizes": (32,), "learning_rate_init": 1e6, "solver": "sgd"},
        train_size=500,
    ).start()
    assert job.join(RUN_SECONDS)
    at.session_state[ui.JOB_KEY] = job
    page(at, "train")
    assert "diverged" in texts(at.error)


# -- Evaluate ------------------------------------------------------------------------


def test_evaluate_confusion_matrix_is_the_models(at, mnist):
    page(at, "evaluate")
    at.selectbox(key="evaluate-model").select("tiny-mlp").run()
    proba = store.predictions(store.open_run("tiny-mlp"), mnist)
    expected = confusion_matrix(mnist.y_test, proba.argmax(axis=1))
    heatmap = figure(at.get("plotly_chart")[0])["data"][0]
    assert heatmap["type"] == "heatmap"
    np.testing.assert_array_equal(np.asarray(heatmap["z"]), expected)
    assert {m.label: m.value for m in at.metric}["Test accuracy"] == (
        f"{np.trace(expected) / expected.sum():.2%}"
    )
    table = at.dataframe[0].value
    assert list(table["Support"]) == np.bincount(mnist.y_test).tolist()


def test_evaluate_clicked_cell_shows_exactly_its_images(at, mnist):
    page(at, "evaluate")
    at.selectbox(key="evaluate-model").select("tiny-mlp").run()
    at.session_state["confusion"] = {
        "selection": {
            "points": [{"x": "9", "y": "4"}],
            "point_indices": [],
            "box": [],
            "lasso": [],
        }
    }
    at.run()
    assert not at.exception
    proba = store.predictions(store.open_run("tiny-mlp"), mnist)
    cell = np.flatnonzero((mnist.y_test == 4) & (proba.argmax(axis=1) == 9))
    assert f"True 4, predicted 9: {len(cell)} images" in texts(at.subheader)
    confidences = [
        float(c.value[:-1]) for c in at.caption if re.fullmatch(r"\d+\.\d%", c.value)
    ]
    expected = sorted(proba[cell, 9], reverse=True)[:60]  # a gallery shows 60
    assert confidences[: len(expected)] == pytest.approx(
        [round(100 * p, 1) for p in expected]
    )


def test_evaluate_mistakes_and_comparison(at, mnist):
    page(at, "evaluate")
    at.selectbox(key="evaluate-model").select("tiny-mlp").run()
    assert not at.image  # only the open tab (the confusion matrix) is drawn
    at.session_state["evaluate-tab"] = "Misclassified images"
    at.run()
    assert len(at.image) == 36
    at.slider(key="evaluate-n-mistakes").set_value(12).run()
    assert len(at.image) == 12
    assert not at.exception
    a = store.predictions(store.open_run("tiny-mlp"), mnist)
    b = store.predictions(store.open_run("tiny-cnn"), mnist)
    worst = metrics.misclassified(mnist.y_test, a)[0]
    first = f"**{mnist.y_test[worst]} → {a[worst].argmax()}**"
    assert first in texts(at.caption)
    at.session_state["evaluate-tab"] = "Compare two models"
    at.run()
    at.selectbox(key="evaluate-other").select("tiny-cnn").run()
    metric = {m.label: m.value for m in at.metric}
    disagree = int(np.sum(a.argmax(axis=1) != b.argmax(axis=1)))
    assert metric["They disagree on"] == f"{disagree:,}"


def test_evaluate_overlays_the_training_curves_of_several_runs(at):
    page(at, "evaluate")
    at.selectbox(key="evaluate-model").select("tiny-mlp").run()
    at.session_state["evaluate-tab"] = "Training curves"
    at.run()
    assert at.multiselect(key="evaluate-curves").value == ["tiny-mlp"]
    # The tiny runs were fitted without a validation set; the shipped CNN has one.
    at.multiselect(key="evaluate-curves").select("tiny-cnn").run()
    at.multiselect(key="evaluate-curves").select("default-cnn").run()
    assert not at.exception
    traces = figure(at.get("plotly_chart")[0])["data"]
    shown = {(t["name"], t["xaxis"]): list(t["y"]) for t in traces}
    for name in ("tiny-mlp", "tiny-cnn", "default-cnn"):
        run = store.open_run(name)
        history = run.meta["history"]
        training = f"{name} · training images"
        validation = f"{name} · validation: {run.validated_on}"
        # Loss on the left (x), accuracy on the right (x2), as saved per epoch.
        assert shown[(training, "x")] == [e["loss"] for e in history]
        assert shown[(training, "x2")] == [e["accuracy"] for e in history]
        if "val_accuracy" in history[0]:
            assert shown[(validation, "x2")] == [e["val_accuracy"] for e in history]
        else:
            assert (validation, "x2") not in shown
    assert len(shown) == 3 * 2 + 2  # training: 3 runs x 2 charts; validation: 1 x 2
    # The shipped CNN's last epochs were its polish (digits.polish): said in words.
    [said] = [c.value for c in at.caption if "polish" in c.value]
    last = len(store.open_run("default-cnn").meta["history"])
    assert said.startswith(
        f"**default-cnn**: epochs {last - 1}-{last} are a short polish"
    )
    at.multiselect(key="evaluate-curves").set_value([]).run()
    assert "Choose one or more runs" in texts(at.info)


# -- Draw ----------------------------------------------------------------------------


def test_draw_empty_canvas_shows_a_hint(at):
    page(at, "draw")
    assert "Draw a digit" in texts(at.info)
    assert not [m for m in at.metric if m.label == "Prediction"]
    at.session_state["draw-canvas-0"] = canvas_drawing([])  # drawn, then erased
    at.run()
    assert not at.exception
    assert "Draw a digit" in texts(at.info)


def test_draw_a_one_is_predicted_by_both_models(at):
    page(at, "draw")
    at.multiselect(key="draw-models").set_value(["tiny-cnn", "tiny-mlp"]).run()
    at.slider(key="draw-brush").set_value(24).run()
    at.session_state["draw-canvas-0"] = canvas_drawing([[(140, 40), (140, 240)]])
    at.run()
    assert not at.exception
    predictions = [m.value for m in at.metric if m.label == "Prediction"]
    assert predictions == ["1", "1"]
    bars = figure(at.get("plotly_chart")[0])["data"][0]
    assert np.asarray(bars["y"]).sum() == pytest.approx(1.0, abs=1e-5)
    assert len(at.image) >= 1  # the preprocessing steps


def test_draw_upload_of_a_photo_is_predicted(at):
    """Dark ink on light paper, as a photographed digit: a 7."""
    page(at, "draw")
    at.multiselect(key="draw-models").set_value(["tiny-mlp"]).run()
    at.segmented_control(key="draw-source").set_value("Upload").run()
    paper = Image.new("L", (300, 400), 235)
    ImageDraw.Draw(paper).line([(70, 90), (230, 90), (130, 330)], fill=30, width=22)
    buffer = io.BytesIO()
    paper.save(buffer, "JPEG")
    at.file_uploader[0].upload("seven.jpg", buffer.getvalue(), "image/jpeg").run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric if m.label == "Prediction"] == ["7"]


def test_draw_upload_of_a_corrupt_file_is_an_error(at):
    page(at, "draw")
    at.segmented_control(key="draw-source").set_value("Upload").run()
    at.file_uploader[0].upload("seven.png", b"not a png", "image/png").run()
    assert not at.exception
    assert "seven.png" in texts(at.error)


# -- Inspect -------------------------------------------------------------------------


def test_inspect_a_test_image_with_the_cnn(at, mnist):
    page(at, "inspect")
    at.selectbox(key="inspect-model").set_value("tiny-cnn").run()
    at.number_input(key="inspect-index").set_value(3).run()
    assert not at.exception and not at.error
    model = store.load_model("tiny-cnn")
    image = mnist.x_test[3].astype(np.float32) / 255
    predicted = str(model.predict(image[None])[0])
    assert [m.value for m in at.metric] == [predicted]
    assert f"a {mnist.y_test[3]}" in at.metric[0].label
    # Input, saliency and occlusion heat maps, each 28x28.
    maps = [figure(c)["data"][0] for c in at.get("plotly_chart")[:3]]
    np.testing.assert_allclose(np.asarray(maps[0]["z"]), image, atol=1e-6)
    assert all(np.asarray(m["z"]).shape == (28, 28) for m in maps)
    from digits import explain

    np.testing.assert_allclose(
        np.asarray(maps[1]["z"]), explain.saliency(model, image).gradient, rtol=1e-5
    )
    # One tab per layer, named with its output shape; every visual names its
    # digits function.
    names = explain.layer_names(model.model_)
    assert [t.label.split()[0] for t in at.tabs] == names
    assert "conv1 24x24x4" in [t.label for t in at.tabs]
    captions = texts(at.caption)
    for function in ("saliency", "occlusion", "activations", "conv_filters", "probe"):
        assert f"explain.{function}" in captions
    # A random image is another test image.
    at.button(key="inspect-random").click().run()
    assert not at.exception
    assert "test image" in at.metric[0].label


def test_inspect_probe_sliders_move_the_digit(at, mnist):
    page(at, "inspect")
    at.selectbox(key="inspect-model").set_value("tiny-cnn").run()
    at.multiselect(key="inspect-probe-models-tiny-cnn").set_value(
        ["tiny-cnn", "tiny-mlp"]
    )
    at.slider(key="probe-dx").set_value(10).run()
    assert not at.exception
    image = mnist.x_test[0].astype(np.float32) / 255
    from digits import explain

    moved = explain.transform(image, shift=(10, 0))
    assert "Shift limited" in texts(at.caption)  # a 7 has no 10 px to its right
    charts = [figure(c) for c in at.get("plotly_chart")]
    shown = next(
        c["data"][0]
        for c in charts
        if c["data"][0]["type"] == "heatmap"
        and np.array_equal(np.asarray(c["data"][0]["z"]), moved.image)
    )
    assert shown is not None
    bars = next(c for c in charts if c["data"][0]["type"] == "bar")
    assert [b["name"] for b in bars["data"]] == ["tiny-cnn", "tiny-mlp"]
    for bar, name in zip(bars["data"], ["tiny-cnn", "tiny-mlp"], strict=True):
        expected = store.load_model(name).predict_proba(moved.image[None])[0]
        np.testing.assert_allclose(np.asarray(bar["y"]), expected, rtol=1e-5)


def test_inspect_the_drawing_from_the_draw_page(at):
    page(at, "inspect")
    at.segmented_control(key="inspect-source").set_value("Drawing").run()
    assert "Nothing drawn yet" in texts(at.info)
    page(at, "draw")
    at.multiselect(key="draw-models").set_value(["tiny-cnn"]).run()
    at.session_state["draw-canvas-0"] = canvas_drawing([[(140, 40), (140, 240)]])
    at.run()
    drawing = at.session_state[ui.DRAWING_KEY]
    assert drawing.shape == (28, 28) and drawing.max() == pytest.approx(1.0)
    page(at, "inspect")
    at.selectbox(key="inspect-model").set_value("tiny-cnn").run()
    assert not at.exception and not at.error
    assert "your drawing" in at.metric[0].label
    assert at.metric[0].value == "1"
    z = np.asarray(figure(at.get("plotly_chart")[0])["data"][0]["z"])
    np.testing.assert_allclose(z, drawing, atol=1e-6)


def test_inspect_the_sklearn_mlp_says_what_does_not_apply(at):
    page(at, "inspect")
    at.selectbox(key="inspect-model").set_value("tiny-mlp").run()
    assert not at.exception and not at.error
    notes = texts(at.info)
    assert "Saliency needs the network's own backward pass" in notes
    assert "layer outputs are not reachable" in notes
    assert not at.tabs
    # Occlusion and the probe still work.
    assert "explain.occlusion" in texts(at.caption)
    assert "explain.probe" in texts(at.caption)


def test_inspect_gradient_check_button(at):
    page(at, "inspect")
    at.selectbox(key="inspect-model").set_value("tiny-cnn").run()
    next(b for b in at.button if b.label == "Run the gradient check").click().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["Layer"]) == ["conv1", "dense1", "dense2"]
    assert set(table["Passed"]) == {"yes"}
    assert all(float(e) < 1e-5 for e in table["Relative error"])


def test_train_shows_training_health_live(at, mnist):
    job = TrainingJob(
        "cnn",
        mnist,
        {"conv_channels": (4,), "hidden_layer_sizes": (16,), "max_iter": 2},
        train_size=1000,
    ).start()
    assert job.join(RUN_SECONDS)
    at.session_state[ui.JOB_KEY] = job
    page(at, "train")
    assert "explain.TrainingHealth" in texts(at.caption)
    # The health chart: the one with a trace per layer (the views inside the
    # network, below it, have charts of their own).
    fig = next(
        f
        for f in map(figure, at.get("plotly_chart"))
        if any(t.get("name") == "conv1" for t in f["data"])
    )
    traces = {(t["name"], t["xaxis"]) for t in fig["data"]}
    assert traces == {
        (layer, axis)
        for layer in ("conv1", "dense1", "dense2")
        for axis in ("x", "x2", "x3")
    }
    dead = next(t for t in fig["data"] if t["xaxis"] == "x3" and t["name"] == "conv1")
    assert all(0 <= v <= 1 for v in dead["y"])
    rows = [r for r in job.snapshot().health if r["layer"] == "conv1"]
    assert list(dead["y"]) == [r["dead_fraction"] for r in rows]
