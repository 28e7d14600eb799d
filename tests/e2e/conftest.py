"""Fixtures of the end-to-end tests: one app server, one Chromium, fresh sessions.

Every test module here is marked ``e2e``; they run with the rest of the suite.
When a test fails, each browser page it opened is saved as a PNG in
``tests/e2e/screenshots/`` (ignored by git), named after the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from appdriver import CHROMIUM, CHROMIUM_ARGS, PREDICTION_TIMER, VIEWPORT, Server
from playwright.sync_api import sync_playwright

SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``streamlit run app.py`` on a free port with a runs dir of its own."""
    root = tmp_path_factory.mktemp("e2e-server")
    (root / "runs").mkdir()
    app = Server(root / "runs", root / "streamlit.log").start()
    yield app
    app.kill()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"The end-to-end tests need Chromium at {CHROMIUM}: "
            "apt-get install chromium (.ci/run does so when it is missing)."
        )
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser, request):
    """A factory of pages, each in a browser context of its own (a new session).

    On failure every page is screenshotted into ``SCREENSHOTS``.
    """
    contexts = []

    def make():
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(30_000)
        context.add_init_script(PREDICTION_TIMER)
        contexts.append(context)
        return context.new_page()

    yield make
    failed = any(
        getattr(request.node, f"report_{when}", None) is not None
        and getattr(request.node, f"report_{when}").failed
        for when in ("setup", "call")
    )
    if failed:
        SCREENSHOTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
        pages = [page for context in contexts for page in context.pages]
        for i, page in enumerate(pages, start=1):
            try:
                page.screenshot(path=SCREENSHOTS / f"{name}-{i}.png", full_page=True)
            except Exception as err:  # a crashed page must not hide the failure
                print(f"no screenshot of page {i}: {err}")
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    """One fresh browser session."""
    return new_page()
