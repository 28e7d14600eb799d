"""Watching and steering a run on the Train page, in Chromium: the views inside
the network update while it trains; Pause holds it (the curve stops growing) and
Resume carries on; a learning rate applied mid-run is marked on the curves.
Screenshots of the page mid-run at projector sizes go to tests/e2e/screenshots/.

The quick CNN on 2,000 images for up to 100 epochs, always ended with Stop (the
server has one training slot, shared with the other tests)."""

from __future__ import annotations

import re
import time

import pytest
from appdriver import (
    PAGE_MS,
    no_exception,
    open_page,
    start_training,
    wait_curve_points,
)
from conftest import SCREENSHOTS
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

SETTINGS = (
    "train-preset-cnn=quick&train-size-mnist=2%2C000&train-cnn-quick-max_iter=100"
)
MAIN_BAR = "[data-testid=stMain] [data-testid=stProgress]"
SIZES = ((1024, 768), (1920, 1080))


def epochs_seen(page: Page, above: float = -1.0) -> float:
    """Wait until the views inside the network were taken after ``above``
    epochs; return when they were."""
    handle = page.wait_for_function(
        """(above) => {
          const m = document.body.innerText.match(/Inside the network · after
            ([\\d.]+) epochs/);
          return m && Number(m[1]) > above ? Number(m[1]) : 0;
        }""".replace("\n            ", " "),
        arg=above,
        timeout=PAGE_MS,
    )
    return handle.json_value()


def scroll_to(page: Page, text: str) -> None:
    """Scroll ``text`` into view; the live views are redrawn every 2 s, so an
    element found may be replaced before the scroll: look again."""
    for _ in range(5):
        try:
            page.get_by_text(text).first.scroll_into_view_if_needed(timeout=5_000)
            return
        except PlaywrightError:
            time.sleep(0.2)
    page.get_by_text(text).first.scroll_into_view_if_needed()


def test_live_views_pause_resume_and_a_new_rate(server, page: Page):
    open_page(page, f"{server.url}/train?{SETTINGS}", "Train")
    start_training(page)
    try:
        steer_and_watch(page)
    finally:  # never leave the server's one training slot taken
        stop = page.locator(".st-key-stop").get_by_role("button", name="Stop")
        if stop.first.is_enabled():
            stop.first.click()
    expect(page.get_by_text("Saved as")).to_be_visible(timeout=PAGE_MS)
    no_exception(page)


def steer_and_watch(page: Page) -> None:
    first = epochs_seen(page)
    expect(page.get_by_text("The first layer's filters")).to_be_visible(timeout=PAGE_MS)
    expect(
        page.get_by_text(re.compile("Followed: the first validation image"))
    ).to_be_visible(timeout=PAGE_MS)
    later = epochs_seen(page, first)  # the views are redrawn as it trains
    assert later > first

    SCREENSHOTS.mkdir(exist_ok=True)
    page.mouse.move(0, 0)  # no tooltip over the page
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        time.sleep(2.5)  # a redraw at this size
        for part in ("Progress", "Inside the network", "Still wrong after"):
            scroll_to(page, part)
            name = part.split()[0].lower()
            page.screenshot(
                path=SCREENSHOTS / f"train-live-{width}x{height}-{name}.png"
            )

    page.locator(".st-key-pause").get_by_role("button").first.click()
    expect(page.locator(MAIN_BAR)).to_contain_text("paused", timeout=PAGE_MS)
    held = wait_curve_points(page, 1)
    time.sleep(3)  # three redraws of the curves
    assert wait_curve_points(page, 1) == held  # nothing trained while paused

    rate = page.locator(".st-key-steer-lr input")
    rate.fill("0.00050")
    rate.press("Enter")
    page.locator(".st-key-steer-apply").get_by_role("button").first.click()
    expect(page.get_by_text("Applied from the next batch.")).to_be_visible(
        timeout=PAGE_MS
    )
    page.locator(".st-key-resume").get_by_role("button").first.click()
    expect(page.locator(MAIN_BAR)).not_to_contain_text("paus", timeout=PAGE_MS)
    wait_curve_points(page, held + 2)
    mark = page.locator(".annotation-text", has_text="learning rate 0.0005")
    expect(mark.first).to_be_visible(timeout=PAGE_MS)
    mark.first.scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOTS / "train-live-after-change.png")
