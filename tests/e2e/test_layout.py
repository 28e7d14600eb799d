"""Every page at projector sizes, in Chromium (issue 17, item 3).

At 1024x768, 1280x720 and 1920x1080, on Home, Train (with a training run going,
so that its live figures and Stop show), Evaluate (each of its tabs), Draw (with
a digit drawn), Inspect and Experiments: no metric, tab or button text is cut,
nothing reaches out of the window sideways, Draw's canvas lies inside its column
and the window. Presenter mode, one click in the sidebar, makes the type larger
and folds the sidebar away, and every page still fits at 1024x768.

One ``streamlit run`` server serves every test here (see conftest.py); each test
is one browser session, which visits every page through the sidebar's links. The
training is the quick CNN on 1,000 images for up to 100 epochs (about half a
minute), always ended with Stop: the server has one training slot, shared with
the tests that follow.
"""

from __future__ import annotations

import re

import pytest
from appdriver import (
    IDLE,
    PAGE_MS,
    PAGE_PATHS,
    PREDICTION,
    SEVEN,
    SMALLEST,
    TRAIN_MS,
    WINDOWS,
    canvas,
    canvas_outside,
    fold_sidebar,
    layout_problems,
    open_page,
    open_sidebar,
    sidebar_folded,
    sidebar_gone,
    start_training,
    stroke,
    switch_page,
)
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

# Train's settings in the URL: the quick CNN on 1,000 images, for up to 100 epochs.
TRAIN = (
    "train?train-preset-cnn=quick&train-size-mnist=1%2C000&train-cnn-quick-max_iter=100"
)
STOP = ".st-key-stop"  # the Train page's Stop button (see test_reload.stop_button)
TAB = "[data-testid=stTabs] [role=tab]"
PRESENTER = "Presenter mode"
# The font size of a caption under a page's title, in CSS pixels.
CAPTION_PX = """() => parseFloat(getComputedStyle(document.querySelector(
  "[data-testid=stMain] [data-testid=stCaptionContainer]")).fontSize)"""
LARGER = 1.2  # presenter mode's type, at least this many times the usual


def fits(page: Page, where: str) -> None:
    """Everything on the page as shown fits the window (see layout_problems)."""
    assert layout_problems(page) == [], where
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def train_running(page: Page) -> None:
    """Start the tiny training run and wait until its live view shows a finished
    epoch (a validation accuracy) with Stop, while it still runs."""
    start_training(page)
    validation = (
        page.locator("[data-testid=stMetric]")
        .filter(has_text="Validation")
        .locator("[data-testid=stMetricValue]")
    )
    expect(validation).to_have_text(re.compile(r"%$"), timeout=TRAIN_MS)
    expect(page.locator(STOP).get_by_role("button", name="Stop").first).to_be_enabled()


def stop_training(page: Page) -> None:
    """Back on Train, press Stop if the run still goes, and wait for it to end."""
    switch_page(page, "Train")
    stop = page.locator(STOP).get_by_role("button", name="Stop").first
    if stop.count() and stop.is_enabled():
        stop.click()
    expect(page.get_by_text("Saved as")).to_be_visible(timeout=TRAIN_MS)


def every_page_fits(page: Page, where: str) -> None:
    """From Train with its run going, visit each page through the sidebar and
    check that it fits: Evaluate with each of its tabs open, Draw with a digit
    drawn on the canvas. Ends on Train with the run stopped."""
    fits(page, f"Train {where}")
    for label in PAGE_PATHS:
        if label == "Train":
            continue
        switch_page(page, label)
        if label == "Draw":
            canvas(page).wait_for()
            stroke(page, SEVEN)
            expect(page.locator(PREDICTION).first).to_be_visible(timeout=PAGE_MS)
            page.wait_for_selector(IDLE, timeout=PAGE_MS)
            assert canvas_outside(page) == [], f"Draw {where}"
        fits(page, f"{label} {where}")
        if label == "Evaluate":
            for tab in page.locator(TAB).all_inner_texts()[1:]:
                page.locator(TAB).filter(has_text=tab).click()
                opened = page.get_by_role("tab", name=tab, selected=True)
                expect(opened).to_be_visible()
                page.wait_for_selector(IDLE, timeout=PAGE_MS)
                fits(page, f"Evaluate, {tab} {where}")
    stop_training(page)


@pytest.mark.parametrize(("width", "height"), WINDOWS)
def test_every_page_fits_the_window(server, page, width, height):
    page.set_viewport_size({"width": width, "height": height})
    open_page(page, f"{server.url}/{TRAIN}", "Train")
    assert not sidebar_folded(page)
    train_running(page)
    every_page_fits(page, f"at {width}x{height}")


def test_presenter_mode_is_larger_type_and_no_sidebar(server, page):
    page.set_viewport_size(SMALLEST)
    open_page(page, f"{server.url}/{TRAIN}", "Train")
    usual = page.evaluate(CAPTION_PX)
    # The sidebar folded and opened again by hand: the browser remembers that it
    # was left open, which presenter mode overrides.
    fold_sidebar(page)
    open_sidebar(page)

    page.get_by_text(PRESENTER, exact=True).click()  # the one click
    sidebar_gone(page)
    expect(page).to_have_url(re.compile(r"[?&]presenter=true(&|$)"))
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    larger = page.evaluate(CAPTION_PX)
    assert larger >= LARGER * usual, (usual, larger)

    # A reload (or a bookmark of the URL) opens in presenter mode, sidebar folded.
    page.reload()
    expect(page.locator("[data-testid=stMain] h1").first).to_have_text(
        "Train", timeout=PAGE_MS
    )
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    sidebar_gone(page)
    assert page.evaluate(CAPTION_PX) == larger

    train_running(page)
    every_page_fits(page, "in presenter mode at 1024x768")
    assert page.evaluate(CAPTION_PX) == larger  # still, after every page
