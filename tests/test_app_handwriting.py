"""AppTest tests of the handwriting test set (saved on Draw, scored, exported and
deleted on Evaluate) and of Evaluate's calibration tab."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sklearn.metrics import confusion_matrix
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from digits import data, handwriting, metrics, preprocess, store, teach, training
from tests import test_app
from tests.test_app import canvas_drawing, figure, page, texts

# The same fixtures as the other page tests: tiny MNIST models, a fresh AppTest.
runs_dir = test_app.runs_dir
at = test_app.at

ONE = [[(140, 40), (140, 240)]]  # a vertical stroke


@pytest.fixture
def hw(tmp_path, monkeypatch) -> handwriting.HandwritingStore:
    """An empty handwriting store of this test's own."""
    path = tmp_path / "handwriting.sqlite"
    monkeypatch.setenv(handwriting.DB_ENV, str(path))
    return handwriting.HandwritingStore(path)


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """What each st.download_button of a run would send: {file name: bytes}."""
    sent: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        if filename is not None:  # images have none; downloads do
            sent[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return sent


def decoded(drawing: dict) -> np.ndarray:
    """The RGBA array the canvas component hands the page for ``drawing``."""
    url = drawing["drawing"]["data"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",")[1]))))


def metric(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def open_tab(at: AppTest, model: str, tab: str) -> AppTest:
    page(at, "evaluate")
    at.selectbox(key="evaluate-model").select(model).run()
    at.session_state["evaluate-tab"] = tab
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def save_mnist(hw, mnist, n: int, mislabel: int | None = None) -> None:
    """The first ``n`` MNIST test digits as saved drawings; ``mislabel`` gets a
    wrong label, so that every model misreads it."""
    for i in range(n):
        label = int(mnist.y_test[i])
        if i == mislabel:
            label = (label + 5) % 10
        hw.add(mnist.x_test[i], label, created=1_700_000_000 + i)


# -- Draw: save ----------------------------------------------------------------------


def test_draw_saves_the_drawing_with_its_label(at, hw):
    page(at, "draw")
    at.multiselect(key="draw-models").set_value(["tiny-mlp"]).run()
    drawing = canvas_drawing(ONE, width=24)
    at.session_state["draw-canvas-0"] = drawing
    at.run()
    save = next(b for b in at.button if b.label == "Save to my handwriting")
    # Without a digit picked nothing is saved.
    save.click().run()
    assert "Pick the digit you meant" in texts(at.warning)
    assert hw.count() == 0
    at.session_state["draw-canvas-0"] = drawing
    at.run()
    at.button_group(key="draw-save-label").set_value(1)
    next(b for b in at.button if b.label == "Save to my handwriting").click().run()
    assert not at.exception
    saved = hw.load()
    assert saved.labels.tolist() == [1]
    assert saved.sources == ("drawn",)
    expected = preprocess.preprocess(decoded(drawing), 28)
    np.testing.assert_array_equal(saved.images[0], expected.centred)
    raw = Image.open(io.BytesIO(hw.raw_png(int(saved.ids[0]))))
    np.testing.assert_array_equal(np.asarray(raw), expected.raw)
    assert f"Saved #{saved.ids[0]} as a 1 (1 in your" in texts(at.success)
    # The canvas is cleared for the next digit, and the digit choice too.
    assert "Draw a digit" in texts(at.info)
    assert at.session_state["draw-save-label"] is None


def test_an_uploaded_photo_is_saved_as_uploaded(at, hw):
    """Dark ink on light paper, read with only the 28x28 MLP chosen."""
    page(at, "draw")
    at.multiselect(key="draw-models").set_value(["tiny-mlp"]).run()
    at.segmented_control(key="draw-source").set_value("Upload").run()
    paper = Image.new("L", (300, 400), 235)
    ImageDraw.Draw(paper).line([(70, 90), (230, 90), (130, 330)], fill=30, width=22)
    buffer = io.BytesIO()
    paper.save(buffer, "PNG")
    at.file_uploader[0].upload("seven.png", buffer.getvalue(), "image/png").run()
    at.button_group(key="draw-save-label").set_value(7)
    next(b for b in at.button if b.label == "Save to my handwriting").click().run()
    assert not at.exception and not at.error
    saved = hw.load()
    assert saved.labels.tolist() == [7] and saved.sources == ("uploaded",)
    expected = preprocess.preprocess(buffer.getvalue(), 28).centred
    np.testing.assert_array_equal(saved.images[0], expected)


def test_draw_save_reports_a_damaged_store(at, hw):
    hw.path.write_bytes(b"not a database" * 100)
    page(at, "draw")
    at.multiselect(key="draw-models").set_value(["tiny-mlp"]).run()
    at.session_state["draw-canvas-0"] = canvas_drawing(ONE, width=24)
    at.run()
    at.button_group(key="draw-save-label").set_value(1)
    next(b for b in at.button if b.label == "Save to my handwriting").click().run()
    assert not at.exception
    assert "was damaged" in texts(at.error)
    assert len(list(hw.path.parent.glob("handwriting.sqlite.corrupt-*"))) == 1
    assert hw.count() == 0  # a fresh store, ready for the next save


# -- Evaluate: calibration ----------------------------------------------------------


def test_calibration_tab_follows_the_threshold(at, mnist):
    at = open_tab(at, "tiny-mlp", "Calibration")
    proba = store.predictions(store.open_run("tiny-mlp"), mnist)
    rel = metrics.reliability(mnist.y_test, proba, 10)
    assert metric(at)["Expected calibration error"] == f"{rel['ece']:.2%}"
    reliability, coverage = (figure(c) for c in at.get("plotly_chart"))
    np.testing.assert_array_equal(reliability["data"][2]["y"], rel["count"])
    curve = metrics.coverage_curve(mnist.y_test, proba)
    np.testing.assert_allclose(coverage["data"][0]["x"], curve["coverage"])
    for threshold in (0.9, 0.5):
        at.slider(key="evaluate-threshold").set_value(threshold).run()
        chosen = metrics.selective(mnist.y_test, proba, threshold)
        assert 0 < chosen["coverage"] < 1
        shown = metric(at)
        assert shown["Coverage"] == f"{chosen['coverage']:.1%}"
        assert shown["Accuracy on those"] == f"{chosen['accuracy']:.2%}"
        assert shown["Mistakes left"] == f"{chosen['errors']:,}"
        point = figure(at.get("plotly_chart")[1])["data"][1]
        assert point["x"] == [pytest.approx(chosen["coverage"])]
    at.select_slider(key="evaluate-bins").set_value(5).run()
    bars = figure(at.get("plotly_chart")[0])["data"][2]["y"]
    assert list(bars) == metrics.reliability(mnist.y_test, proba, 5)["count"]


# -- Evaluate: my handwriting --------------------------------------------------------


def test_my_handwriting_tab_with_no_drawings(at, hw):
    at = open_tab(at, "tiny-cnn", "My handwriting")
    assert "No drawings saved yet" in texts(at.info)
    assert not at.get("download_button")


def test_my_handwriting_tab_scores_the_saved_drawings(at, hw, mnist):
    save_mnist(hw, mnist, 12, mislabel=3)
    at = open_tab(at, "tiny-cnn", "My handwriting")
    saved = hw.load()
    proba = handwriting.predict(store.load_model("tiny-cnn"), saved)
    predicted = proba.argmax(axis=1)
    right = int(np.sum(predicted == saved.labels))
    assert right < 12  # the mislabelled one at least
    shown = metric(at)
    assert shown["Accuracy on my handwriting"] == f"{right / 12:.1%}"
    assert shown["Misread drawings"] == f"{12 - right} of 12"
    mine, test = (figure(c)["data"][0]["z"] for c in at.get("plotly_chart"))
    expected = confusion_matrix(saved.labels, predicted, labels=range(10))
    np.testing.assert_array_equal(mine, expected)
    assert np.asarray(test).sum() == len(mnist.y_test)
    assert len(at.image) == 12
    misreads = [c.value for c in at.caption if ":red-background[" in c.value]
    assert len(misreads) == 12 - right
    wrong = saved.ids[3]
    assert any(c.startswith(f"#{wrong} :red-background[") for c in misreads)
    at.toggle(key="hw-only-misreads").set_value(True).run()
    assert len(at.image) == 12 - right


def test_my_handwriting_does_not_apply_to_8x8_models(at, hw, mnist):
    save_mnist(hw, mnist, 3)
    at.selectbox(key="dataset").select("sklearn-digits").run()
    # No 8x8 model is saved in the test runs dir: train a tiny one.
    training.train_run(
        "mlp",
        data.load_dataset("sklearn-digits"),
        params={"hidden_layer_sizes": (16,), "max_iter": 2},
        name="tiny-8x8",
    )
    try:
        at = open_tab(at, "tiny-8x8", "My handwriting")
        assert "Your drawings are 28x28 digits" in texts(at.info)
        assert len(at.get("download_button")) == 2  # still exportable
    finally:
        store.delete_run("tiny-8x8")


def test_a_taught_model_is_scored_only_on_drawings_it_never_learned_from(at, hw, mnist):
    # 14 validation digits (never replayed by teaching) saved as drawings; a copy
    # of tiny-mlp taught on some of them and saved as a run, as Draw does.
    val = data.validation_split(mnist).validation[:14]
    for i in val:
        hw.add(mnist.x_train[i], int(mnist.y_train[i]))
    saved = hw.load()
    base = store.open_run("tiny-mlp")
    taught = teach.fine_tune(
        store.load_model(base),
        saved.images,
        saved.labels,
        saved.ids,
        mnist,
        test_images=100,
    )
    run = teach.save_taught(taught, base, mnist, name="tiny-taught")
    try:
        at = open_tab(at, run.name, "My handwriting")
        n_out, n = len(taught.learned), len(taught.held_out)
        assert 0 < n < 14
        assert (
            f"{n_out} of your drawings were used to teach this model, so they are "
            "left out here" in texts(at.info)
        )
        assert f"It is scored on the other {n}." in texts(at.info)
        held = np.isin(saved.ids, taught.held_out)
        predicted = store.load_model(run).predict(saved.images[held])
        right = int(np.sum(predicted == saved.labels[held]))
        shown = metric(at)
        assert shown["Accuracy on my handwriting"] == f"{right / n:.1%}"
        assert shown["Misread drawings"] == f"{n - right} of {n}"
        assert len(at.image) == n
        shown_ids = {
            int(c.value.split()[0][1:]) for c in at.caption if c.value.startswith("#")
        }
        assert shown_ids == set(taught.held_out.tolist())
        # The tiny-mlp it was taught from is still scored on all 14.
        at = open_tab(at, "tiny-mlp", "My handwriting")
        assert "used to teach this model" not in texts(at.info)
        assert metric(at)["Misread drawings"].endswith(" of 14")
        # With the drawings it never learned from deleted, none are left to score.
        hw.delete(taught.held_out.tolist())
        at = open_tab(at, run.name, "My handwriting")
        assert "and none are left to test it on" in texts(at.info)
        assert "Accuracy on my handwriting" not in metric(at)
        assert not at.image
        assert len(at.get("download_button")) == 2  # still exportable
    finally:
        store.delete_run(run.name)


def test_export_and_delete(at, hw, mnist, downloads):
    save_mnist(hw, mnist, 6)
    at = open_tab(at, "tiny-mlp", "My handwriting")
    assert {b.label for b in at.get("download_button")} == {
        "Download .npz",
        "Download .csv",
    }
    npz = next(v for k, v in downloads.items() if k.endswith(".npz"))
    exported = handwriting.load_npz(npz)
    np.testing.assert_array_equal(exported.images, mnist.x_test[:6])
    np.testing.assert_array_equal(exported.labels, mnist.y_test[:6])
    csv = next(v for k, v in downloads.items() if k.endswith(".csv"))
    assert len(csv.decode().splitlines()) == 1 + 6
    ids = hw.load().ids.tolist()
    # Delete two chosen drawings.
    assert at.button(key="hw-delete").disabled
    at.multiselect(key="hw-delete-ids").set_value(ids[1:3]).run()
    at.button(key="hw-delete").click().run()
    assert not at.exception
    assert hw.load().ids.tolist() == [ids[0], *ids[3:]]
    assert "Deleted 2 drawings." in texts(at.success)
    assert len(at.image) == 4
    # Delete all: only once the box is ticked.
    assert at.button(key="hw-clear").disabled
    at.checkbox(key="hw-confirm-clear").check().run()
    at.button(key="hw-clear").click().run()
    assert hw.count() == 0
    assert "Deleted all 4 drawings." in texts(at.success)
    assert "No drawings saved yet" in texts(at.info)


def test_my_handwriting_tab_reports_a_damaged_store(at, hw):
    hw.path.write_bytes(b"\x00garbage" * 512)
    at = open_tab(at, "tiny-mlp", "My handwriting")
    assert "was damaged" in texts(at.error)
    assert "No drawings saved yet" in texts(at.info)
    (aside,) = hw.path.parent.glob("handwriting.sqlite.corrupt-*")
    assert aside.read_bytes() == b"\x00garbage" * 512
