"""Offline start (issue 17, item 10), in Chromium: no MNIST files and no internet.

The server here has an empty data directory of its own, and every download goes
through a proxy address on 127.0.0.1 where nothing listens, so it fails at once
(urllib honours ``http_proxy``/``https_proxy``; ``no_proxy`` spares only the
server's own address), as on a machine with no network. The app must then fall
back to scikit-learn's 8x8 digits and say so in one line, with the download's
errors in a "Details" expander; Home must name the 8x8 digits; Train's default
settings must fit 8x8 images (Start enabled); and the models shipped for MNIST
must stay listed, their saved curves shown.
"""

from __future__ import annotations

import re

import pytest
from appdriver import (
    IDLE,
    PAGE_MS,
    Server,
    free_port,
    no_exception,
    open_expander,
    open_page,
    title,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

NOTICE = "MNIST could not be downloaded: using sklearn digits (8x8)."
SMALLEST = {"width": 1024, "height": 768}  # the smallest projector the app must fit
HEADING = "Handwritten digits, 8x8 pixels"  # ui.DATASET_TITLES["sklearn-digits"]
WARNING = "[data-testid=stMain] [data-testid=stAlertContentWarning]"
# How many lines a paragraph takes on screen: its height over its line height.
LINES = (
    "p => Math.round(p.getBoundingClientRect().height / "
    "parseFloat(getComputedStyle(p).lineHeight))"
)
SHIPPED = ("default-cnn", "default-mlp")
# The names of the traces of the first Plotly chart of the page, once drawn.
TRACE_NAMES = """() => {
  const gd = document.querySelector("[data-testid=stMain] .js-plotly-plot");
  return gd && gd._fullData ? gd._fullData.map(t => t.name) : [];
}"""


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """``streamlit run app.py`` with no MNIST files and every download refused."""
    root = tmp_path_factory.mktemp("e2e-offline")
    (root / "runs").mkdir()
    (root / "data").mkdir()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxies = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    env = {
        "DIGITS_DATA_DIR": str(root / "data"),
        **dict.fromkeys(proxies, closed),
        # The server's own address is reached directly, never through the proxy.
        **dict.fromkeys(("no_proxy", "NO_PROXY"), "127.0.0.1,localhost"),
    }
    app = Server(root / "runs", root / "streamlit.log", env=env).start()
    yield app
    app.kill()


def check_notice(page) -> None:
    """The page's only warning is the one-line notice, with "Details" below it
    holding the download's error."""
    expect(page.locator(WARNING)).to_have_count(1)
    text = page.locator(WARNING).locator("[data-testid=stMarkdownContainer]")
    expect(text).to_have_text(NOTICE)
    assert "\n" not in text.inner_text().strip()
    lines = text.locator("p").evaluate(LINES)
    assert lines == 1, f"the notice wraps onto {lines} lines"
    open_expander(page, "Details")
    details = page.locator("[data-testid=stExpander]").filter(
        has=page.get_by_text("Details", exact=True)
    )
    expect(details.locator("code")).to_contain_text("Could not download")
    expect(details.locator("code")).to_contain_text("every mirror failed")


def test_home_offline_names_the_8x8_digits_in_one_line(offline, page):
    page.set_viewport_size(SMALLEST)  # one line even on the narrowest screen
    open_page(page, offline.url, HEADING)
    check_notice(page)
    main = page.locator("[data-testid=stMain]")
    metric = main.locator("[data-testid=stMetric]").filter(has_text="Image size")
    expect(metric.locator("[data-testid=stMetricValue]")).to_have_text("8x8")
    expect(main.get_by_text("showing MNIST")).to_have_count(0)
    # The shipped MNIST models are still listed: the run picker offers them.
    picker = page.get_by_role("combobox", name="Run to change", exact=True)
    expect(picker).to_have_value(re.compile(r"^default-cnn · "))
    picker.click()
    page.keyboard.press("ArrowDown")  # opens the list, if the click did not
    options = page.get_by_role("option")
    for name in SHIPPED:
        expect(options.filter(has_text=name)).to_have_count(1)
    page.keyboard.press("Escape")
    no_exception(page)


def test_train_offline_can_start_with_its_default_settings(offline, page):
    page.set_viewport_size(SMALLEST)
    open_page(page, f"{offline.url}/train", "Train")
    check_notice(page)
    start = page.get_by_role("button", name="Start training")
    # Enabled once the estimate for the default settings is shown.
    expect(page.get_by_text("Time per epoch")).to_be_visible(timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    expect(start).to_be_enabled()
    expect(
        page.locator("[data-testid=stMain] [data-testid=stException]")
    ).to_have_count(0)
    expect(page.locator("[data-testid=stAlertContentError]")).to_have_count(0)


def test_evaluate_offline_still_shows_the_shipped_models_curves(offline, page):
    open_page(page, f"{offline.url}/evaluate", "Evaluate")
    expect(
        page.get_by_text("No model has been trained on sklearn digits")
    ).to_be_visible()
    chosen = page.locator("[data-testid=stMultiSelect]").filter(
        has_text="Runs to compare"
    )
    for name in SHIPPED:  # both chosen at first
        expect(chosen).to_contain_text(f"{name} · ")
    names = page.wait_for_function(
        f"() => {{ const n = ({TRACE_NAMES})(); return n.length ? n : null; }}",
        timeout=PAGE_MS,
    ).json_value()
    for name in SHIPPED:
        assert f"{name} · training images" in names, names
    title(page, "Evaluate")
