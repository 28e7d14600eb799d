"""Each page, used in Chromium as a person uses it: clicks, mouse strokes, uploads.

One ``streamlit run`` server serves every test here (see conftest.py); each test
opens its own browser session. What is checked is what a person sees.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from appdriver import (
    IDLE,
    ONE,
    PAGE_MS,
    PAGE_PATHS,
    SEVEN,
    canvas,
    check_sidebar,
    choose,
    clear_canvas,
    nav_link,
    no_exception,
    open_page,
    prediction_of,
    saved_run,
    slide,
    start_training,
    stroke,
    title,
    visit_every_page,
    wait_curve_points,
)
from PIL import Image, ImageFilter
from playwright.sync_api import expect
from sklearn.metrics import confusion_matrix

from digits import store

pytestmark = pytest.mark.e2e

UPLOAD_INDEX = 1  # MNIST test image #1, a "2", becomes the photographed digit
GALLERY_FACTOR = 4  # figures.enlarge shows a 28x28 test image at 112x112


def test_every_sidebar_page_opens_without_exception(server, page):
    open_page(page, server.url, "Handwritten digits")
    labels = visit_every_page(page)
    assert labels == ["Home", "Train", "Evaluate", "Draw", "Inspect", "Experiments"]


@pytest.mark.parametrize("label", [label for label in PAGE_PATHS if label != "Home"])
def test_each_page_opens_first_at_its_own_url(server, page, label):
    open_page(page, f"{server.url}/{PAGE_PATHS[label]}", label)
    check_sidebar(page)


def test_draw_a_one_then_a_seven(server, page):
    open_page(page, f"{server.url}/draw", "Draw")
    canvas(page).wait_for()
    for shape, digit in ((ONE, "1"), (SEVEN, "7")):
        stroke(page, shape)
        expect(prediction_of(page, "default-cnn")).to_have_text(digit, timeout=PAGE_MS)
        no_exception(page)
        clear_canvas(page)
        expect(page.get_by_text("Draw a digit on the canvas")).to_be_visible()


def photo_of_digit(image: np.ndarray) -> bytes:
    """A 28x28 MNIST digit as a phone photo: dark ink on grey paper, large,
    off-centre, blurred and noisy. PNG bytes."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(255 - image).resize((240, 240), Image.Resampling.BICUBIC)
    paper = Image.new("L", (420, 360), 215)
    paper.paste(big.point(lambda v: round(v * 215 / 255)), (120, 50))
    blurred = np.asarray(paper.filter(ImageFilter.GaussianBlur(3)), dtype=np.float64)
    noisy = np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255)
    out = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).convert("RGB").save(out, "PNG")
    return out.getvalue()


def test_upload_a_photo_of_a_handwritten_digit(server, page, mnist, tmp_path):
    path = tmp_path / "digit.png"
    path.write_bytes(photo_of_digit(mnist.x_test[UPLOAD_INDEX]))
    expected = str(mnist.y_test[UPLOAD_INDEX])
    open_page(page, f"{server.url}/draw", "Draw")
    page.locator("[data-testid=stButtonGroup]").get_by_text("Upload").click()
    page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(path)
    expect(prediction_of(page, "default-cnn")).to_have_text(expected, timeout=PAGE_MS)
    expect(page.get_by_text("Centred by mass, 28x28")).to_be_visible()
    no_exception(page)


def test_train_watch_the_curve_stop_and_pick_the_model(server, page):
    open_page(page, f"{server.url}/train?train-preset-cnn=quick", "Train")
    # All 55,000 training images (the other 5,000 validate): an epoch takes
    # about a minute, so Stop comes mid-epoch.
    assert slide(page, "Training images", "End") == "55,000"
    start_training(page)
    first = wait_curve_points(page, 2)
    grown = wait_curve_points(page, first + 4)
    assert grown > first
    expect(page.get_by_text("epoch 1 of 1")).to_be_visible()
    page.get_by_role("button", name="Stop").click()
    name, accuracy = saved_run(page, stopped=True)
    no_exception(page)
    wait_curve_points(page, grown, timeout=PAGE_MS)  # the curve stays

    nav_link(page, "Evaluate").click()
    title(page, "Evaluate")
    choose(page, "Model", "default-cnn")
    choose(page, "Model", name)
    accuracy_metric = page.locator("[data-testid=stMetric]").filter(
        has_text="Test accuracy"
    )
    expect(accuracy_metric.locator("[data-testid=stMetricValue]")).to_have_text(
        accuracy, timeout=PAGE_MS
    )
    run = store.list_runs(server.runs_dir)[0][0]
    assert (run.name, run.meta["stopped"] is not None) == (name, True)


CELL_GEOMETRY = """gd => {
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  return {
    x: gd._fullData[0].x.map((_, j) => xa._offset + xa.l2p(j)),
    y: gd._fullData[0].y.map((_, i) => ya._offset + ya.l2p(i)),
  };
}"""


GALLERY_IMG = "[data-testid=stMain] [data-testid=stImage] img"


def gallery_images(page) -> np.ndarray:
    """The gallery's images (n, 28, 28), fetched as the browser did, shrunk back."""
    images = []
    for img in page.locator(GALLERY_IMG).all():
        body = page.request.get(img.get_attribute("src")).body()
        big = np.asarray(Image.open(io.BytesIO(body)).convert("L"), np.float64)
        n = big.shape[0] // GALLERY_FACTOR
        images.append(big.reshape(n, GALLERY_FACTOR, n, GALLERY_FACTOR).mean((1, 3)))
    return np.array(images)


def test_click_a_confusion_cell_to_see_exactly_its_images(
    server, page, mnist, monkeypatch
):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(server.runs_dir))
    proba = store.predictions(store.open_run("default-cnn"), mnist)
    expected = confusion_matrix(mnist.y_test, proba.argmax(1), labels=range(10))
    open_page(page, f"{server.url}/evaluate", "Evaluate")
    choose(page, "Model", "default-cnn")
    # The chart shows default-cnn's matrix (not the one of the model shown before).
    matrix = json.dumps(json.dumps(expected.tolist(), separators=(",", ":")))
    page.wait_for_function(
        f"""() => {{
          const gd = document.querySelector("[data-testid=stMain] .js-plotly-plot");
          if (!gd?._fullData?.[0] || !gd._fullLayout?.xaxis?._offset) return false;
          const z = Array.from(gd._fullData[0].z, row => Array.from(row, Number));
          return JSON.stringify(z) === {matrix};
        }}""",
        timeout=PAGE_MS,
    )
    chart = page.locator("[data-testid=stMain] .js-plotly-plot").first
    cells = chart.evaluate(CELL_GEOMETRY)
    off = expected - np.diag(np.diag(expected))
    true, pred = np.unravel_index(off.argmax(), off.shape)  # the commonest mistake
    box = chart.bounding_box()
    page.mouse.click(box["x"] + cells["x"][pred], box["y"] + cells["y"][true])

    count = int(expected[true, pred])
    heading = f"True {true}, predicted {pred}: {count} images"
    expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    # The heading can show before the rest of the run has reached the browser.
    expect(page.locator(GALLERY_IMG)).to_have_count(count, timeout=PAGE_MS)
    no_exception(page)
    shown = gallery_images(page)
    assert len(shown) == count

    # Exactly those images: the test images of true class `true` the default CNN
    # calls `pred`, most confident first; each shown image is nearest to its own.
    chosen = np.flatnonzero((mnist.y_test == true) & (proba.argmax(1) == pred))
    chosen = chosen[np.argsort(-proba[chosen, pred], kind="stable")]
    x = mnist.x_test.reshape(len(mnist.x_test), -1).astype(np.float64)
    nearest = [int(np.abs(x - image.ravel()).mean(1).argmin()) for image in shown]
    assert nearest == chosen.tolist()
