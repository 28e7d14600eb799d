"""What Draw's "Inside the network" costs each stroke, in Chromium (issue 19, item 3).

Starts ``streamlit run app.py`` (the end-to-end tests' ``Server``, its own runs
folder) and one headless Chromium (Debian's, tests/e2e/appdriver.py), opens Draw
and draws a 1 and a 7 in turn, each on a cleared canvas, in rounds with "Show
each layer for this drawing" off and on (the order alternating between rounds,
so that drift in the machine's load hits both). For each stroke, in the page's
own clock from the mouse-up:

- prediction: until the first prediction shows (what test_concurrency times);
- drawn: until the page's script run is over and the browser's main thread is
  free again, i.e. everything of that stroke is drawn (strips, charts, images).

The first stroke after each toggle is left out (it warms the new elements up).
Prints the medians of each side, every stroke's time, and the load averages.

    DIGITS_DATA_DIR=../shared/data python benchmarks/draw_layers.py --rounds 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from appdriver import (  # noqa: E402 (the e2e helpers are not a package)
    CHROMIUM,
    CHROMIUM_ARGS,
    IDLE,
    ONE,
    PAGE_MS,
    PREDICTION_TIMER,
    SEVEN,
    Server,
    canvas,
    clear_canvas,
    prediction_latency,
    stroke,
)
from playwright.sync_api import sync_playwright  # noqa: E402

TOGGLE = "Show each layer for this drawing"
# The page's clock at the last mouse-up, and once the script run that followed is
# over and the main thread has run a frame and a task after it.
DRAWN_TIMER = """
window.__drawn = {up: null, ran: false, done: null};
document.addEventListener("mouseup", () => {
  window.__drawn = {up: performance.now(), ran: false, done: null};
}, true);
new MutationObserver(() => {
  const d = window.__drawn, app = document.querySelector("[data-testid=stApp]");
  if (d.up === null || d.done !== null || !app) return;
  const state = app.getAttribute("data-test-script-state");
  if (state === "running") d.ran = true;
  if (d.ran && state === "notRunning") {
    d.done = -1;
    setTimeout(() => requestAnimationFrame(() => setTimeout(() => {
      d.done = performance.now(); }, 0)), 0);
  }
}).observe(document, {attributes: true, subtree: true,
  attributeFilter: ["data-test-script-state"]});
"""


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def one_stroke(page, shape) -> tuple[float, float]:
    """(prediction, drawn) seconds of one stroke on a cleared canvas."""
    clear_canvas(page)
    stroke(page, shape)
    prediction = prediction_latency(page)
    page.wait_for_function("window.__drawn.done > 0", timeout=PAGE_MS)
    up, done = page.evaluate("[window.__drawn.up, window.__drawn.done]")
    return prediction, (done - up) / 1000


def measure(url: str, strokes: int, rounds: int) -> dict[bool, list]:
    """{layers on: [(prediction, drawn), ...]} over ``rounds`` rounds."""
    times: dict[bool, list] = {False: [], True: []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(PREDICTION_TIMER)
        context.add_init_script(DRAWN_TIMER)
        page = context.new_page()
        page.goto(f"{url}/draw")
        canvas(page).wait_for(timeout=PAGE_MS)
        one_stroke(page, ONE)  # loads the models
        shown = page.get_by_label(TOGGLE, exact=True).is_checked()
        for r in range(rounds):
            for on in (False, True) if r % 2 == 0 else (True, False):
                if on != shown:
                    page.get_by_text(TOGGLE).click()
                    page.wait_for_selector(IDLE, timeout=PAGE_MS)
                    shown = on
                for i in range(strokes + 1):
                    measured = one_stroke(page, SEVEN if i % 2 else ONE)
                    if i:
                        times[on].append(measured)
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, default=6, help="per side per round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="draw-layers-"))
    (root / "runs").mkdir()
    print(f"load average before: {load_average()}")
    server = Server(root / "runs", root / "streamlit.log").start()
    try:
        times = measure(server.url, args.strokes, args.rounds)
    finally:
        server.kill()
    print(f"load average after: {load_average()}")
    for on, pairs in times.items():
        prediction = [1e3 * p for p, _ in pairs]
        drawn = [1e3 * d for _, d in pairs]
        print(
            f"layers {'on ' if on else 'off'}: prediction median "
            f"{statistics.median(prediction):.0f} ms, drawn median "
            f"{statistics.median(drawn):.0f} ms (drawn: {[round(d) for d in drawn]})"
        )


if __name__ == "__main__":
    main()
