"""One step of learning on a drawing, and "teach it my handwriting", in Chromium
(issue 19, item 5): draw a digit, pick the digit it should be, take one step and
see the probabilities move; then fine-tune a copy on saved drawings, see its
scores before and after, and save it as a run that Draw then offers.

This module runs a server of its own, whose "my handwriting" store is a fresh
file holding 30 drawings made from MNIST validation digits (mirrored: a style
the shipped models misread), so that it never touches the learner's own store.
Screenshots of the section at 1024x768 and 1920x1080 go to tests/e2e/screenshots/.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from appdriver import (
    IDLE,
    PAGE_MS,
    SEVEN,
    Server,
    canvas,
    no_exception,
    open_page,
    prediction_of,
    stroke,
)
from conftest import SCREENSHOTS
from playwright.sync_api import Page, expect

from digits import data, handwriting

pytestmark = pytest.mark.e2e

N_DRAWINGS = 30
SIZES = [(1024, 768), (1920, 1080)]
MAX_SHOTS = 5  # window heights of one section, at most
ARROW = re.compile(r"([\d.]+)% → ([\d.]+)%")


@pytest.fixture(scope="module")
def teach_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-teach")
    (root / "runs").mkdir()
    db = root / "handwriting.sqlite"
    mnist = data.load_dataset("mnist")
    val = data.validation_split(mnist).validation
    store = handwriting.HandwritingStore(db)
    for i in np.random.default_rng(0).choice(val, N_DRAWINGS, replace=False):
        store.add(
            np.ascontiguousarray(mnist.x_train[i][:, ::-1]), int(mnist.y_train[i])
        )
    app = Server(
        root / "runs", root / "streamlit.log", env={handwriting.DB_ENV: str(db)}
    ).start()
    yield app
    app.kill()


def metric(page: Page, label: str):
    """The value of the metric labelled ``label``."""
    box = page.locator("[data-testid=stMetric]").filter(
        has=page.locator("[data-testid=stMetricLabel]").get_by_text(label, exact=True)
    )
    return box.locator("[data-testid=stMetricValue]")


def shot(page: Page, name: str, heading: str, until: str | None = None) -> None:
    """Screenshots of the page from ``heading`` down to the heading ``until`` (or
    the page's end), at each size in SIZES: a window's height at a time, as a
    person scrolls (``name-WxH-1.png``, ``-2``...)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(1000)  # the charts refit to the new width
        page.get_by_role("heading", name=heading).evaluate(
            "e => e.scrollIntoView({block: 'start'})"
        )
        for i in range(1, MAX_SHOTS + 1):
            page.wait_for_timeout(300)
            page.screenshot(path=SCREENSHOTS / f"{name}-{width}x{height}-{i}.png")
            end = until and page.get_by_role("heading", name=until).bounding_box()
            if end and end["y"] < height:
                break
            page.mouse.move(width * 0.6, height / 2)
            before = page.get_by_role("heading", name=heading).bounding_box()["y"]
            page.mouse.wheel(0, height * 0.85)
            page.wait_for_timeout(300)
            if page.get_by_role("heading", name=heading).bounding_box()["y"] == before:
                break  # the end of the page


def test_one_step_moves_the_probabilities_and_teaching_saves_a_run(teach_server, page):
    open_page(page, f"{teach_server.url}/draw", "Draw")
    canvas(page).wait_for()
    stroke(page, SEVEN)
    expect(prediction_of(page, "default-cnn")).to_have_text("7", timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)

    step = page.get_by_role("button", name="Take one step")
    expect(step).to_be_disabled()  # no digit picked yet: the learner chooses
    page.get_by_role("radiogroup", name="Which model learns").get_by_text(
        "default-cnn"
    ).click()
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    pills = page.locator(".st-key-draw-teach-label")
    pills.get_by_text("2", exact=True).click()
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    expect(step).to_be_enabled()
    step.click()
    moved = metric(page, "Probability of 2")
    expect(moved).to_have_text(ARROW, timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    before, after = map(float, ARROW.search(moved.inner_text()).groups())
    assert after > before, moved.inner_text()
    loss_before = float(metric(page, "Loss before").inner_text())
    loss_after = float(metric(page, "Loss after").inner_text())
    assert loss_after < loss_before
    for layer in ("dense2", "relu3", "relu2", "conv2", "relu1", "conv1"):
        chart = page.locator(
            f".st-key-draw-gradient-default-cnn-{layer} .js-plotly-plot"
        )
        expect(chart).to_be_visible()
    expect(
        page.locator(".st-key-draw-step-moved-default-cnn .js-plotly-plot")
    ).to_be_visible()
    no_exception(page)
    shot(
        page,
        "draw-step",
        "One step of learning on your digit",
        "Teach it my handwriting",
    )

    page.set_viewport_size({"width": 1400, "height": 1000})
    page.get_by_role("button", name="Teach a copy of default-cnn").click()
    held = metric(page, "Your drawings kept aside")
    expect(held).to_have_text(re.compile(r"\d+% → \d+%"), timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    expect(metric(page, "MNIST test digits")).to_have_text(ARROW)
    no_exception(page)
    shot(page, "draw-teach", "Teach it my handwriting")

    page.set_viewport_size({"width": 1400, "height": 1000})
    page.get_by_role("button", name="Save as a new run").click()
    expect(page.get_by_text("Saved as default-cnn-my-handwriting")).to_be_visible(
        timeout=PAGE_MS
    )
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    no_exception(page)
    assert (teach_server.runs_dir / "default-cnn-my-handwriting").is_dir()
