"""A refresh loses nothing: reloads, links and the sidebar's live progress.

Each browser tab has a client id in its URL (``?client=...``) and its jobs are
kept under it on the server, so a reload mid-run finds the running job again;
the settings are in the URL too, so a reload or a pasted link opens the same
configuration; a link opened by someone else while its tab is alive carries the
settings only, under a new client id. The sidebar's progress bar is live on
every page. See ``ui.attach_tab`` and ``digits.jobs.JobRegistry``.

The training here is the quick CNN on 2,000 images for up to 100 epochs (about
a minute), always ended with Stop: the server has one training slot, shared
with the tests that follow.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from appdriver import (
    IDLE,
    PAGE_MS,
    nav_link,
    no_exception,
    open_page,
    saved_run,
    start_training,
    title,
    wait_curve_points,
)
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from digits import store

pytestmark = pytest.mark.e2e

# Settings given in the URL, as a shared link would: 2,000 images, 100 epochs.
# A slider of options is written in the URL as it shows its value ("2,000").
SETTINGS = (
    "train-preset-cnn=quick&train-size-mnist=2%2C000&train-cnn-quick-max_iter=100"
)
SIDEBAR_BAR = "[data-testid=stSidebar] [data-testid=stProgress]"
MAIN_BAR = "[data-testid=stMain] [data-testid=stProgress]"
OPEN_MS = 5_000  # for a select box's list to show its options
RECONNECT_MS = 20_000  # a reload's new session waits a few seconds for the old


def client_id(page: Page) -> str:
    """The client id in the page's URL."""
    [client] = parse_qs(urlsplit(page.url).query)["client"]
    return client


def slider_value(page: Page, label: str) -> str:
    """The value shown by the slider labelled ``label`` (its thumb's text)."""
    thumb = (
        page.locator("[data-testid=stSlider]")
        .filter(
            has=page.locator("[data-testid=stWidgetLabel]").get_by_text(
                label, exact=True
            )
        )
        .get_by_role("slider")
    )
    return thumb.get_attribute("aria-valuetext") or thumb.get_attribute("aria-valuenow")


def stop_button(page: Page):
    """The Train page's Stop button (not Streamlit's own, shown while a page
    runs). Click its ``first``: while the live view redraws, the old button may
    still be on the page beside the new one for a moment."""
    return page.locator(".st-key-stop").get_by_role("button", name="Stop")


def epochs_value(page: Page) -> str:
    """The Epochs slider's value (it is in the closed Training group)."""
    summary = page.locator("[data-testid=stExpander] summary").filter(
        has=page.get_by_text("Training", exact=True)
    )
    if summary.locator("..").get_attribute("open") is None:
        summary.click()
    return slider_value(page, "Epochs")


def sidebar_percent(page: Page, above: int = -1, timeout: float = PAGE_MS) -> int:
    """Wait until the sidebar's training progress shows more than ``above``
    percent; return it."""
    handle = page.wait_for_function(
        """([selector, above]) => {
          const bar = document.querySelector(selector);
          const m = bar && bar.innerText.match(/Training .*: (\\d+)%/);
          return m && Number(m[1]) > above ? Number(m[1]) : 0;
        }""",
        arg=[SIDEBAR_BAR, above],
        timeout=timeout,
    )
    return handle.json_value()


def epoch_shown(page: Page, above: int = 0, timeout: float = PAGE_MS) -> int:
    """Wait until the Train page's progress shows an epoch after ``above``."""
    handle = page.wait_for_function(
        """([selector, above]) => {
          const bar = document.querySelector(selector);
          const m = bar && bar.innerText.match(/epoch (\\d+) of/);
          return m && Number(m[1]) > above ? Number(m[1]) : 0;
        }""",
        arg=[MAIN_BAR, above],
        timeout=timeout,
    )
    return handle.json_value()


def pick(page: Page, label: str, option: str, attempts: int = 3) -> None:
    """Choose ``option`` in the select box ``label``; a rerun that lands just as
    the list opens closes it again, so the box is opened again if need be."""
    box = page.get_by_role("combobox", name=label, exact=True)
    item = page.get_by_role("option").filter(has_text=option).first
    for attempt in range(attempts):
        page.wait_for_selector(IDLE, timeout=PAGE_MS)
        box.click()
        try:
            item.click(timeout=OPEN_MS)
            break
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
    expect(box).to_have_value(option, timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def stop_and_check_saved(page: Page, server) -> str:
    """Press Stop on the Train page; the run is saved as stopped. Its name."""
    stop_button(page).first.click()
    name, _ = saved_run(page, stopped=True)
    runs = {run.name: run for run in store.list_runs(server.runs_dir)[0]}
    assert runs[name].meta["stopped"] is not None
    assert runs[name].meta["dataset"]["n_train"] == 2000
    return name


def stop_quietly(page: Page) -> None:
    """Press Stop on ``page``'s Train page, best effort (a test is failing; a job
    left training would hold the server's one slot)."""
    try:
        if "/train" not in page.url:
            nav_link(page, "Train").click()
            title(page, "Train")
        stop_button(page).first.click(timeout=PAGE_MS)
    except Exception as exc:  # the test's own failure is what matters
        print(f"could not stop the training job: {exc}")


def start(page: Page, server) -> str:
    """Open Train with ``SETTINGS`` in the URL and start training; the client id."""
    open_page(page, f"{server.url}/train?{SETTINGS}", "Train")
    client = client_id(page)
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,64}", client), page.url
    start_training(page)
    wait_curve_points(page, 2)
    return client


def test_a_reload_mid_run_reattaches_the_tab_to_its_job(server, page):
    client = start(page, server)
    try:
        before = epoch_shown(page)
        page.reload()
        title(page, "Train")
        # The same tab, with the same settings, finds its job again: the curve,
        # the progress going on, and a Stop that works.
        assert client_id(page) == client
        wait_curve_points(page, 2, timeout=RECONNECT_MS)
        epoch_shown(page, above=max(before, epoch_shown(page)))
        assert slider_value(page, "Training images") == "2,000"
        expect(page.get_by_role("button", name="Start training")).to_be_disabled()
        sidebar_percent(page, above=0)
    except BaseException:
        stop_quietly(page)
        raise
    stop_and_check_saved(page, server)
    no_exception(page)
    # Once more after the run: the tab still shows what became of its job.
    page.reload()
    title(page, "Train")
    expect(page.get_by_text("Saved as")).to_be_visible(timeout=RECONNECT_MS)
    assert client_id(page) == client


def test_the_url_keeps_the_settings_and_ignores_bad_values(server, page):
    open_page(page, f"{server.url}/train?{SETTINGS}&dataset=mnist", "Train")
    # Defaults are left out of the URL; the rest is kept and shown.
    query = parse_qs(urlsplit(page.url).query)
    assert query["train-cnn-quick-max_iter"] == ["100"]
    assert query["train-size-mnist"] == ["2,000"]
    assert "dataset" not in query  # MNIST is the default
    assert slider_value(page, "Training images") == "2,000"
    assert epochs_value(page) == "100"
    # A change goes into the URL, and a reload keeps it.
    pick(page, "Model", "Dense network (NumPy)")
    expect(page).to_have_url(re.compile(r"train-kind=Dense"), timeout=PAGE_MS)
    page.reload()
    title(page, "Train")
    expect(page.get_by_role("combobox", name="Model", exact=True)).to_have_value(
        "Dense network (NumPy)"
    )
    assert slider_value(page, "Training images") == "2,000"

    # Tampered values fall back to the defaults, without an error.
    bad = (
        "train-kind=nonsense&train-size-mnist=-3&train-cnn-quick-max_iter=1e9"
        "&dataset=../../etc&client=%3Cscript%3E"
    )
    open_page(page, f"{server.url}/train?{bad}", "Train")
    expect(page.get_by_role("combobox", name="Model", exact=True)).to_have_value(
        "CNN (NumPy)"
    )
    # The page's first settings: the demo preset, for 5 epochs, on all 55,000
    # images.
    assert slider_value(page, "Training images") == "55,000"
    assert epochs_value(page) == "5"
    query = parse_qs(urlsplit(page.url).query)
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,64}", query["client"][0])
    assert "dataset" not in query and "train-size-mnist" not in query

    # The dataset chosen on Home goes with every page, and comes back on reload.
    open_page(page, f"{server.url}/train?dataset=sklearn-digits", "Train")
    assert slider_value(page, "Training images") != "5,000"  # 1,797 images in all
    nav_link(page, "Home").click()
    expect(page).to_have_url(re.compile(r"^[^?]+/\?.*dataset=sklearn-digits"))
    page.reload()
    expect(page.get_by_role("combobox", name="Dataset", exact=True)).to_have_value(
        "sklearn digits (8x8)", timeout=PAGE_MS
    )
    no_exception(page)


def test_a_link_opened_elsewhere_carries_settings_but_not_the_job(server, new_page):
    owner, other = new_page(), new_page()  # two browsers: two people
    client = start(owner, server)
    try:
        other.goto(owner.url)  # the owner's link, client id and all
        title(other, "Train")
        # Its own tab: a new client id, the same settings, and no job.
        expect(other).not_to_have_url(
            re.compile(f"client={re.escape(client)}"), timeout=RECONNECT_MS
        )
        assert client_id(other) != client
        assert slider_value(other, "Training images") == "2,000"
        assert epochs_value(other) == "100"
        expect(other.get_by_text("Set the hyperparameters")).to_be_visible()
        expect(stop_button(other)).to_have_count(0)
        expect(other.locator(SIDEBAR_BAR)).to_have_count(0)
        expect(other.get_by_role("button", name="Start training")).to_be_enabled(
            timeout=PAGE_MS
        )
        # The owner still has its job, and its Stop.
        assert client_id(owner) == client
        epoch_shown(owner, above=epoch_shown(owner))
    except BaseException:
        stop_quietly(owner)
        raise
    stop_and_check_saved(owner, server)
    no_exception(other)


def test_the_sidebar_shows_live_progress_on_other_pages(server, page):
    start(page, server)
    try:
        nav_link(page, "Draw").click()
        title(page, "Draw")
        first = sidebar_percent(page, above=0)
        later = sidebar_percent(page, above=first)
        assert 0 < first < later <= 100
        nav_link(page, "Train").click()
        title(page, "Train")
    except BaseException:
        stop_quietly(page)
        raise
    stop_and_check_saved(page, server)
    sidebar = page.locator("[data-testid=stSidebar]")
    expect(sidebar).to_contain_text("Last run:", timeout=PAGE_MS)
    expect(page.locator(SIDEBAR_BAR)).to_have_count(0)
