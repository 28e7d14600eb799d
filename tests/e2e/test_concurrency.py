"""Four people at once: two train, two draw, on one server with one training slot.

Checks that each session gets its own results, that the second training waits
its turn with a visible message (see ``digits.slots``), that predictions come
back in under a second while a model trains, and that nothing errors. The latency
is judged on rounds during which the virtual machine's host left us the CPU (see
MAX_STEAL); every round is printed.
"""

from __future__ import annotations

import pytest
from appdriver import (
    ONE,
    PAGE_MS,
    SEVEN,
    canvas,
    clear_canvas,
    nav_link,
    no_exception,
    open_expander,
    prediction_latency,
    prediction_of,
    saved_run,
    slide,
    start_training,
    stroke,
    title,
    wait_curve_points,
)
from playwright.sync_api import expect

from digits import store

pytestmark = pytest.mark.e2e

MAX_LATENCY = 1.0  # seconds from the last mouse-up to the prediction: the issue's
ROUNDS = 3  # drawings per drawing session while a model trains
# A round during which the hypervisor gave more than this share of the CPU time to
# other machines ("steal": every latency over 1 s seen came with 28-53%) measures
# the neighbours, not this server: it is reported, and another round is drawn.
MAX_STEAL = 0.2
MAX_ROUNDS = 10
QUEUED = "Waiting for a training slot"
# The Train page with the quick CNN (the page starts at the demo preset).
QUICK = "train?train-preset-cnn=quick"


def cpu_ticks() -> list[int]:
    """The machine's CPU time counters from /proc/stat (steal is the 8th)."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def draw_at_once(
    drawers, shapes, strokes: list[int], steal: list[float]
) -> list[float]:
    """Each drawer draws its shape, one right after the other (the first one's
    prediction is still on its way). Their latencies (s), in the pages' clocks;
    ``strokes`` gets how many strokes each drawing took, ``steal`` the share of
    CPU time the hypervisor gave other machines meanwhile (for the report)."""
    before = cpu_ticks()
    for page, shape in zip(drawers, shapes, strict=True):
        strokes.append(stroke(page, shape))
    latencies = [prediction_latency(page) for page in drawers]
    ticks = [b - a for a, b in zip(before, cpu_ticks(), strict=False)]
    steal.append(round(ticks[7] / max(1, sum(ticks)), 2) if len(ticks) > 7 else 0.0)
    return latencies


def stop_training(*pages) -> None:
    """Press Stop on each page's Train page, best effort (a test is failing)."""
    for page in pages:
        try:
            nav_link(page, "Train").click()
            title(page, "Train")
            page.get_by_role("button", name="Stop").click(timeout=PAGE_MS)
        except Exception as exc:  # the test's own failure is what matters
            print(f"could not stop a training job: {exc}")


def test_two_sessions_train_while_two_draw(server, new_page):
    pages = [new_page() for _ in range(4)]
    for page, path in zip(pages, (QUICK, QUICK, "draw", "draw"), strict=True):
        page.goto(f"{server.url}/{path}")
    first, second, *drawers = pages
    for page, heading in zip(pages, ("Train", "Train", "Draw", "Draw"), strict=True):
        title(page, heading)

    # The first session trains on all 55,000 training images (the other 5,000
    # validate) for 100 epochs (until Stop)...
    slide(first, "Training images", "End")
    open_expander(first, "Training")
    assert slide(first, "Epochs", "End") == "100"
    start_training(first)
    wait_curve_points(first, 2)
    # ...so the second one, on 500, waits for the slot and says so.
    assert slide(second, "Training images", "Home") == "500"
    start_training(second)
    queued = second.get_by_text(QUEUED)
    expect(queued).to_be_visible(timeout=PAGE_MS)
    expect(second.get_by_text("1 model(s) at a time")).to_be_visible()

    try:
        # The two who train look at Home meanwhile (their jobs go on), while two
        # people draw, each their own digit. (Watching the live curves instead costs
        # the server a figure and the browser a redraw twice a second each, on the
        # same two cores as everything else here; see the README.)
        for page in (first, second):
            nav_link(page, "Home").click()
            title(page, "Handwritten digits")
        for page in drawers:  # the first drawing may load the models
            canvas(page).wait_for()
            stroke(page, ONE)
            prediction_latency(page)
            clear_canvas(page)
        latencies, server_times, strokes, steal = [], [], [], []
        rounds = []  # (latencies, steal share) of each round
        i = 0
        while sum(s <= MAX_STEAL for _, s in rounds) < ROUNDS and i < MAX_ROUNDS:
            shapes = (ONE, SEVEN) if i % 2 == 0 else (SEVEN, ONE)
            round_latencies = draw_at_once(drawers, shapes, strokes, steal)
            rounds.append((round_latencies, steal[-1]))
            latencies += round_latencies
            digits = ("1", "7") if i % 2 == 0 else ("7", "1")
            for page, digit in zip(drawers, digits, strict=True):
                for model in ("default-cnn", "default-mlp"):
                    expect(prediction_of(page, model)).to_have_text(digit)
                no_exception(page)
                server_times.append(page.get_by_text("Server time:").inner_text())
                clear_canvas(page)
            i += 1
        print(
            f"prediction latencies under load (s): {[round(t, 3) for t in latencies]}"
        )
        print(f"steal share during each round: {steal}")
        print("as the Draw page measured them:", *server_times, sep="\n  ")
        print(
            f"strokes per drawing (more than 1: a fresh canvas missed one): {strokes}"
        )
        measured = [t for lat, s in rounds if s <= MAX_STEAL for t in lat]
        assert len(measured) >= ROUNDS * len(drawers), (
            f"the host ran other machines for more than {MAX_STEAL:.0%} of the CPU "
            f"time in {len(rounds) - len(measured) // len(drawers)} of "
            f"{len(rounds)} rounds, so the latency could not be measured: {rounds}"
        )
        assert max(measured) < MAX_LATENCY, rounds
        for page in (first, second):
            nav_link(page, "Train").click()
            title(page, "Train")
        points = wait_curve_points(first, 2)  # the first job still trains...
        wait_curve_points(first, points + 2)
        expect(queued).to_be_visible()  # ...so the second still waits
    except BaseException:
        # The server is shared with the tests that follow: a job left training
        # would hold its one slot, and their Train test would queue behind it.
        stop_training(second, first)
        raise

    # Stop the first; it is saved, then the second trains in its turn.
    first.get_by_role("button", name="Stop").click()
    name_first, _ = saved_run(first, stopped=True)
    expect(queued).to_have_count(0, timeout=PAGE_MS)
    wait_curve_points(second, 1)
    name_second, _ = saved_run(second, stopped=False)
    assert name_first != name_second
    for page, name in ((first, name_first), (second, name_second)):
        sidebar = page.locator("[data-testid=stSidebar]")
        expect(sidebar).to_contain_text(f"Last run: {name}")
    for page in pages:
        no_exception(page)
        expect(page.get_by_text("Training failed")).to_have_count(0)
    runs = {run.name: run for run in store.list_runs(server.runs_dir)[0]}
    assert runs[name_first].meta["dataset"]["n_train"] == 55_000
    assert runs[name_second].meta["dataset"]["n_train"] == 500
    assert runs[name_second].meta["stopped"] is None
