"""Drive the dashboard as a person does: a ``streamlit run`` server and Chromium.

``Server`` starts ``streamlit run app.py`` on 127.0.0.1 in its own process group
(so that a test can kill it with SIGKILL, as a crash would). The other helpers
act on a Playwright page: open a page, draw strokes on the canvas, read what is
shown. Every wait is on a condition, with a generous timeout, never a fixed sleep.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # Debian's; a browser is never downloaded
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1000}
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
EXCEPTION = "[data-testid=stException]"
PREDICTION = "[data-testid=stMain] [data-testid=stMetricValue]"
# The sidebar's page links (ui.sidebar's st.page_link), and Streamlit's own list
# of pages, which .streamlit/config.toml hides (client.showSidebarNavigation).
NAV_LINK = "[data-testid=stSidebar] [data-testid=stPageLink-NavLink]"
AUTO_NAV = "[data-testid=stSidebarNav]"
ICON = "[data-testid=stIconMaterial]"
# Each sidebar label, in order, and the path of its page's URL.
PAGE_PATHS = {
    "Home": "",
    "Train": "train",
    "Evaluate": "evaluate",
    "Draw": "draw",
    "Inspect": "inspect",
    "Experiments": "experiments",
}
CANVAS = "[data-testid=stBidiComponentIsolated] canvas.upper-canvas"
INK_LAYER = "[data-testid=stBidiComponentIsolated] canvas.dc-canvas.lower-canvas"
STROKE_ATTEMPTS = 3
INK_SECONDS = 5  # for a stroke to show on the canvas
START_SECONDS = 60  # for the server to answer its health check
PAGE_MS = 90_000  # for a page's script run (the first ones load MNIST, score 10k)
TRAIN_MS = 180_000  # for a stopped or short training run to be saved

# Records, in the page's own clock, the last mouse-up and when a prediction first
# shows after it: the latency a person sees, whatever Playwright is doing.
PREDICTION_TIMER = """
window.__prediction = {up: null, shown: null};
document.addEventListener("mouseup", () => {
  window.__prediction = {up: performance.now(), shown: null};
}, true);
new MutationObserver(() => {
  const p = window.__prediction;
  if (p.up !== null && p.shown === null && document.querySelector(SELECTOR)) {
    p.shown = performance.now();
  }
}).observe(document, {childList: true, subtree: true, characterData: true});
""".replace("SELECTOR", json.dumps(PREDICTION))

# The live training chart's number of points (-1 before Plotly has drawn it).
CURVE_POINTS = """() => {
  const gd = document.querySelector("[data-testid=stMain] .js-plotly-plot");
  return gd && gd._fullData && gd._fullData[0] ? gd._fullData[0].x.length : -1;
}"""

# Shapes of strokes, in fractions of the canvas (x right, y down).
ONE = [(0.5, 0.15), (0.5, 0.85)]
SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app.py`` on 127.0.0.1 with its own runs dir and log file."""

    def __init__(self, runs_dir: Path, log: Path, env: dict | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.log = Path(log)
        self.env = dict(env or {})  # more environment for the server only
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        env = {
            **os.environ,
            "DIGITS_RUNS_DIR": str(self.runs_dir),
            # One slot whatever the cores, so the queue is the same everywhere.
            "DIGITS_TRAINING_SLOTS": "1",
            **self.env,
        }
        command = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.address=127.0.0.1",
            f"--server.port={self.port}",
            "--server.headless=true",
            "--server.fileWatcherType=none",
            "--browser.gatherUsageStats=false",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, to kill at once
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)  # polling for the server, not waiting on a result
        self.kill()
        raise RuntimeError(f"streamlit did not answer in {START_SECONDS} s; {self.log}")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the server's process group and wait for it to end."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


# -- pages ------------------------------------------------------------------------


def no_exception(page: Page) -> None:
    """The page shows no exception box (Streamlit's uncaught-error element)."""
    expect(page.locator(EXCEPTION)).to_have_count(0)


def title(page: Page, text: str) -> None:
    """Wait for the page titled ``text`` to finish running, without exceptions."""
    expect(page.locator("[data-testid=stMain] h1").first).to_have_text(
        text, timeout=PAGE_MS
    )
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    no_exception(page)


def open_page(page: Page, url: str, heading: str) -> None:
    """Go to ``url`` (a page of the app) and wait for its ``heading``."""
    page.goto(url)
    title(page, heading)


def nav_labels(page: Page) -> list[str]:
    """The labels of the sidebar's page links, top to bottom."""
    links = page.locator(f"{NAV_LINK} [data-testid=stMarkdownContainer]")
    return [text.strip() for text in links.all_inner_texts()]


def nav_link(page: Page, label: str):
    """The sidebar's link to the page labelled ``label``."""
    return page.locator(NAV_LINK).filter(has=page.get_by_text(label, exact=True))


def check_sidebar(page: Page) -> list[str]:
    """The sidebar shows the six labelled links, each with its icon, in order, and
    not Streamlit's own list of pages. Returns the labels."""
    expect(page.locator(NAV_LINK)).to_have_count(len(PAGE_PATHS))
    expect(page.locator(AUTO_NAV)).to_have_count(0)
    labels = nav_labels(page)
    assert labels == list(PAGE_PATHS), labels
    for link in page.locator(NAV_LINK).all():
        expect(link.locator(ICON)).to_have_count(1)
    return labels


def visit_every_page(page: Page) -> list[str]:
    """Click each page's link in the sidebar in turn; each must run without an
    exception, at its own URL, with the same sidebar. Returns the links' labels."""
    labels = check_sidebar(page)
    for label in labels:
        switch_page(page, label)
        check_sidebar(page)
    return labels


def choose(page: Page, select_label: str, option_text: str) -> None:
    """Open the select box labelled ``select_label`` and click ``option_text``."""
    box = page.get_by_role("combobox", name=select_label, exact=True)
    box.click()
    page.get_by_role("option").filter(has_text=option_text).first.click()
    expect(box).to_have_value(re.compile(re.escape(option_text)), timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def slide(page: Page, label: str, key: str = "End") -> str:
    """Press ``key`` (End: largest value, Home: smallest) on the slider labelled
    ``label``; returns its new value as shown."""
    thumb = (
        page.locator("[data-testid=stSlider]")
        .filter(
            has=page.locator("[data-testid=stWidgetLabel]").get_by_text(
                label, exact=True
            )
        )
        .get_by_role("slider")
    )
    before = thumb.get_attribute("aria-valuenow") or ""
    thumb.focus()
    page.keyboard.press(key)
    expect(thumb).not_to_have_attribute("aria-valuenow", before, timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    return thumb.get_attribute("aria-valuetext") or ""


def open_expander(page: Page, label: str) -> None:
    """Click the expander labelled ``label`` open."""
    summary = page.locator("[data-testid=stExpander] summary").filter(
        has=page.get_by_text(label, exact=True)
    )
    summary.click()
    expect(summary.locator("..")).to_have_attribute("open", "")


def start_training(page: Page) -> None:
    """Press Start training once the estimate for the settings is shown."""
    start = page.get_by_role("button", name="Start training")
    expect(start).to_be_enabled(timeout=PAGE_MS)
    start.click()


def saved_run(page: Page, stopped: bool) -> tuple[str, str]:
    """Wait for the Train page's "Saved as" message; (run name, test accuracy)."""
    saved = page.get_by_text("Saved as")
    expect(saved).to_be_visible(timeout=TRAIN_MS)
    text = saved.inner_text()
    assert ("after you pressed Stop" in text) == stopped, text
    match = re.search(r"Saved as (\S+?)(?: after .*)?: test accuracy (\d+\.\d+%)", text)
    assert match, text
    return match[1], match[2]


def wait_curve_points(page: Page, at_least: int, timeout: float = TRAIN_MS) -> int:
    """Wait until the live training chart has ``at_least`` points; return them.

    The chart is redrawn twice a second, so its count is read in the same step.
    """
    handle = page.wait_for_function(
        f"() => {{ const n = ({CURVE_POINTS})(); return n >= {at_least} ? n : 0; }}",
        timeout=timeout,
    )
    return handle.json_value()


# -- the Draw page ----------------------------------------------------------------


def canvas(page: Page):
    return page.locator(CANVAS)


def has_ink(page: Page) -> bool:
    """True if the canvas shows a stroke (any bright pixel on its drawing layer)."""
    return page.locator(INK_LAYER).evaluate(
        """c => {
          const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          for (let i = 0; i < d.length; i += 4) if (d[i] > 128) return true;
          return false;
        }"""
    )


def stroke(page: Page, shape: Sequence[tuple[float, float]]) -> int:
    """Draw one stroke through ``shape`` (fractions of the canvas) with the mouse.

    A canvas that was just cleared is a new component, which may not take
    strokes for a moment on a busy machine (the stroke leaves no ink, as it
    would for a person); the stroke is then drawn again, as a person would.
    Returns how many strokes it took.
    """
    for attempt in range(1, STROKE_ATTEMPTS + 1):
        box = canvas(page).bounding_box()
        assert box is not None, "the drawing canvas is not on the page"
        x, y, w, h = box["x"], box["y"], box["width"], box["height"]
        points = [(x + fx * w, y + fy * h) for fx, fy in shape]
        page.mouse.move(*points[0])
        page.mouse.down()
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            steps = max(2, int(max(abs(x1 - x0), abs(y1 - y0)) / 8))
            page.mouse.move(x1, y1, steps=steps)
        page.mouse.up()
        deadline = time.monotonic() + INK_SECONDS
        while time.monotonic() < deadline:
            if has_ink(page):
                return attempt
            page.wait_for_timeout(50)  # polling the canvas, not waiting blindly
    raise AssertionError(f"{STROKE_ATTEMPTS} strokes left no ink on the canvas")


def clear_canvas(page: Page) -> None:
    """Press Clear and wait until no prediction is shown."""
    page.get_by_role("button", name="Clear", exact=True).click()
    expect(page.locator(PREDICTION)).to_have_count(0, timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def prediction_of(page: Page, run_name: str):
    """The Prediction value shown for ``run_name`` (its own column on Draw)."""
    column = page.locator(
        "[data-testid=stColumn]:not(:has([data-testid=stColumn]))"
    ).filter(has=page.locator("[data-testid=stMetric]"), has_text=run_name)
    return column.locator("[data-testid=stMetricValue]")


def prediction_latency(page: Page, timeout: float = PAGE_MS) -> float:
    """Seconds from the last mouse-up to the first prediction shown after it."""
    page.wait_for_function("window.__prediction.shown !== null", timeout=timeout)
    up, shown = page.evaluate("[window.__prediction.up, window.__prediction.shown]")
    return (shown - up) / 1000


# -- projector sizes ----------------------------------------------------------------

# The window sizes every page must fit: a classroom projector's up to a desktop's.
WINDOWS = [(1024, 768), (1280, 720), (1920, 1080)]
SMALLEST = {"width": 1024, "height": 768}
SIDEBAR = "[data-testid=stSidebar]"
SETTLE_MS = 3_000  # for the page to stop moving (an underline or sidebar sliding)
FOLDED_SIDEBAR = f"{SIDEBAR}[data-collapsed=true]"

# The bounding boxes of the canvas and of its column: the element, on the way up
# from the canvas (out of the component's shadow root too), whose parent is the
# row of columns.
CANVAS_AND_COLUMN = """c => {
  const box = e => { const r = e.getBoundingClientRect();
    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  let x = c, child = null;
  while (x && x.getAttribute?.("data-testid") !== "stHorizontalBlock") {
    child = x;
    x = x.parentElement || x.getRootNode().host || null;
  }
  return {canvas: box(c), column: child && x ? box(child) : null,
          viewport: {left: 0, top: 0, right: innerWidth, bottom: innerHeight}};
}"""

# The texts of the metrics' labels and values that do not show whole: an element
# whose text is wider than its box (cut, or ended with an ellipsis by CSS).
CUT_METRIC_TEXTS = """() => {
  const cut = [];
  for (const m of document.querySelectorAll(
      "[data-testid=stMetricLabel], [data-testid=stMetricValue]")) {
    for (const e of [m, ...m.querySelectorAll("*")]) {
      if (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1) {
        cut.push(m.innerText); break;
      }
    }
    if (m.innerText.trim().endsWith("…")) cut.push(m.innerText);
  }
  return cut;
}"""

# Every text on the page that does not show whole, as "kind: text": the metrics'
# labels and values, the tabs' labels and the buttons' (page links too). A text
# is cut if an element of it is wider than its box (cut, or ended with an
# ellipsis by CSS), if it ends with "…", or if it reaches out of an ancestor that
# clips it (a row of tabs that scrolls, a column too narrow for a button).
# Elements not shown (a closed expander's, the folded sidebar's) are left out.
CUT_TEXTS = """() => {
  const kinds = {
    metric: "[data-testid=stMetricLabel], [data-testid=stMetricValue]",
    tab: "[data-testid=stTabs] [role=tab]",
    button: "[data-testid^=stBaseButton], [data-testid=stPageLink-NavLink]",
  };
  const shown = e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && !e.closest("[data-collapsed=true]")
      && getComputedStyle(e).visibility !== "hidden";
  };
  const clipped = e => {
    const r = e.getBoundingClientRect();
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX === "visible") continue;
      const q = a.getBoundingClientRect();
      if (r.left < q.left - 1 || r.right > q.right + 1) return true;
    }
    return false;
  };
  const cut = [];
  for (const [kind, selector] of Object.entries(kinds)) {
    for (const m of document.querySelectorAll(selector)) {
      if (!shown(m)) continue;
      const text = m.innerText.trim();
      const wide = [m, ...m.querySelectorAll("*")].some(
        e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1);
      if (wide || text.endsWith("…") || clipped(m)) cut.push(`${kind}: ${text}`);
    }
  }
  return cut;
}"""

# How many CSS pixels the page reaches out of the window sideways, as the
# document and as the main area (which scrolls by itself): 0 and 0 if nothing does.
OVERFLOW_X = """() => {
  const main = document.querySelector("[data-testid=stMain]");
  return [document.documentElement.scrollWidth - innerWidth,
          main ? main.scrollWidth - main.clientWidth : 0];
}"""


def layout_problems(page: Page) -> list[str]:
    """What does not fit the window on the page as shown: each cut text, and how
    far the page overflows sideways. Empty if everything shows whole.

    Waits up to ``SETTLE_MS`` for everything to fit first: a tab's underline
    sliding to the tab just opened, or a sidebar sliding away, may reach out of
    its box for a moment. What still does not fit then is returned.
    """
    fitting = f"""() => ({CUT_TEXTS})().length === 0
      && ({OVERFLOW_X})().every(overflow => overflow <= 0)"""
    try:
        page.wait_for_function(fitting, timeout=SETTLE_MS)
    except PlaywrightTimeout:
        pass  # said below, one by one
    problems = [f"cut {text!r}" for text in page.evaluate(CUT_TEXTS)]
    document, main = page.evaluate(OVERFLOW_X)
    if document > 0 or main > 0:
        problems.append(f"{document} px (document), {main} px (main) too wide")
    return problems


def canvas_outside(page: Page) -> list[str]:
    """The sides on which Draw's canvas reaches out of its column or the window
    (empty if it lies inside both)."""
    boxes = canvas(page).evaluate(CANVAS_AND_COLUMN)
    if boxes["column"] is None:
        return ["the canvas is not in a column"]
    out = []
    for outer in ("column", "viewport"):
        inner, box = boxes["canvas"], boxes[outer]
        out += [
            f"{side} of the {outer}"
            for side in ("left", "top")
            if inner[side] < box[side] - 0.5
        ]
        out += [
            f"{side} of the {outer}"
            for side in ("right", "bottom")
            if inner[side] > box[side] + 0.5
        ]
    return out


def sidebar_folded(page: Page) -> bool:
    """True if the sidebar is folded away (collapsed)."""
    return page.locator(FOLDED_SIDEBAR).count() == 1


def fold_sidebar(page: Page) -> None:
    """Fold the sidebar away with its own button (shown while the mouse is on it)."""
    page.locator(SIDEBAR).hover()
    page.locator("[data-testid=stSidebarCollapseButton] button").click()
    sidebar_gone(page)


def sidebar_gone(page: Page) -> None:
    """Wait until the sidebar is folded and has slid out of the window, the main
    area taking the whole width (what is measured meanwhile is in motion)."""
    expect(page.locator(FOLDED_SIDEBAR)).to_have_count(1)
    page.wait_for_function(
        """() => document.querySelector("[data-testid=stSidebar]")
          .getBoundingClientRect().right <= 0 && document.querySelector(
          "[data-testid=stMain]").getBoundingClientRect().left <= 0""",
        timeout=PAGE_MS,
    )


def open_sidebar(page: Page) -> None:
    """Open the folded sidebar with the button at the top left."""
    page.locator("[data-testid=stExpandSidebarButton]").click()
    expect(page.locator(FOLDED_SIDEBAR)).to_have_count(0)


def switch_page(page: Page, label: str) -> None:
    """Click the sidebar's link to the page labelled ``label`` and wait for that
    page to finish running, without exceptions. A folded sidebar is opened for the
    click, as a person would, and folded again after."""
    folded = sidebar_folded(page)
    if folded:
        open_sidebar(page)
    before = page.locator("[data-testid=stMain] h1").first.inner_text()
    nav_link(page, label).click()
    path = re.escape(PAGE_PATHS[label])
    expect(page).to_have_url(re.compile(rf"^https?://[^/]+/{path}(\?.*)?$"))
    if label != "Home":  # Home's own title names the app
        expect(page.locator("[data-testid=stMain] h1").first).not_to_have_text(
            before, timeout=PAGE_MS
        )
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    no_exception(page)
    if folded:
        fold_sidebar(page)
