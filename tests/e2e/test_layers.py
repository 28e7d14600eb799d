"""The network beside a drawing, in Chromium (issue 19, items 3 and 4): Draw's
layer strips follow the drawing, and a clicked feature-map pixel is worked out
number by number, its sum plus bias equal to the value the map shows.

One ``streamlit run`` server serves every test here (see conftest.py).
"""

from __future__ import annotations

import re

import pytest
from appdriver import (
    IDLE,
    ONE,
    PAGE_MS,
    SEVEN,
    canvas,
    clear_canvas,
    no_exception,
    open_page,
    prediction_of,
    stroke,
)
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

STRIP = "draw-strip-default-cnn-"  # plus the layer's name
STRIPS = ["conv1", "relu1", "conv2", "relu2", "relu3", "dense2"]

# The heat map's values (z, rows of numbers) of the chart with key ``key``.
SHOWN_Z = """key => {
  const gd = document.querySelector(`.st-key-${key} .js-plotly-plot`);
  const z = gd?._fullData?.[0]?.z;
  return z ? Array.from(z, row => Array.from(row, v => v === null ? null : Number(v)))
           : null;
}"""
# Where, on the page, point ``i`` of the clickable markers (trace 1) is drawn.
POINT_XY = """([key, i]) => {
  const gd = document.querySelector(`.st-key-${key} .js-plotly-plot`);
  const t = gd._fullData[1], L = gd._fullLayout, box = gd.getBoundingClientRect();
  return [box.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]),
          box.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])];
}"""
NUMBER = r"([+-]?\d+\.\d+)"


def shown(page: Page, key: str):
    page.wait_for_function(SHOWN_Z, arg=key, timeout=PAGE_MS)
    return page.evaluate(SHOWN_Z, key)


def click_point(page: Page, key: str, i: int) -> None:
    """Click marker ``i`` of the chart with key ``key`` (scrolled into view)."""
    page.locator(f".st-key-{key}").scroll_into_view_if_needed()
    page.mouse.click(*page.evaluate(POINT_XY, [key, i]))


def show_layers(page: Page) -> None:
    """Turn on Draw's "Inside the network" (off by default: it costs time)."""
    page.get_by_text("Show each layer for this drawing").click()
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def draw(page: Page, shape, digit: str) -> None:
    stroke(page, shape)
    expect(prediction_of(page, "default-cnn")).to_have_text(digit, timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def test_the_layer_strips_change_with_the_drawing(server, page):
    open_page(page, f"{server.url}/draw", "Draw")
    canvas(page).wait_for()
    draw(page, ONE, "1")
    show_layers(page)
    for name in STRIPS:
        expect(page.locator(f".st-key-{STRIP}{name} .js-plotly-plot")).to_be_visible()
    one = {name: shown(page, STRIP + name) for name in ("conv1", "relu2", "dense2")}

    clear_canvas(page)
    draw(page, SEVEN, "7")
    seven = {name: shown(page, STRIP + name) for name in one}
    for name in one:
        assert seven[name] != one[name], f"{name} shows the same for a 1 and a 7"
    # The scores strip: the 7 scores highest for the seven, the 1 for the one.
    assert max(range(10), key=lambda d: seven["dense2"][0][d]) == 7
    assert max(range(10), key=lambda d: one["dense2"][0][d]) == 1

    # The scikit-learn MLP's hidden layers, from its weights.
    whose = page.get_by_role("radiogroup", name="Whose layers")
    whose.get_by_text("default-mlp").click()
    mlp = ".st-key-draw-strip-default-mlp-{} .js-plotly-plot"
    expect(page.locator(mlp.format("hidden1"))).to_be_visible(timeout=PAGE_MS)
    expect(page.locator(mlp.format("output"))).to_be_visible()
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    no_exception(page)


@pytest.mark.parametrize("layer", ["conv1", "relu1"])
def test_a_clicked_pixel_adds_up_to_the_value_shown(server, page, layer):
    open_page(page, f"{server.url}/draw", "Draw")
    canvas(page).wait_for()
    draw(page, SEVEN, "7")
    show_layers(page)
    channel = 5
    click_point(page, STRIP + layer, channel)  # enlarge map 5
    key = f"draw-map-default-cnn-{layer}-{channel}"
    values = shown(page, key)
    # The map's brightest pixel: on the stroke, so the numbers are not all 0.
    width = len(values[0])
    flat = [v for row in values for v in row]
    i = max(range(len(flat)), key=lambda j: flat[j])
    row, col = divmod(i, width)
    click_point(page, key, i)

    heading = f"One pixel of {layer}: map {channel}, row {row}, column {col}"
    expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    steps = page.locator("[data-testid=stMain] ol li").all_inner_texts()
    total = float(re.search(f"products: {NUMBER}", steps[0]).group(1))
    bias, pre = map(float, re.search(f"bias {NUMBER}: {NUMBER}", steps[1]).groups())
    # Four decimals each, as shown: the sum plus the bias to their rounding.
    assert total + bias == pytest.approx(pre, abs=2e-4)
    last = float(re.findall(NUMBER, steps[-1])[-1])
    assert last == pytest.approx(flat[i], abs=1e-4)  # the value the map shows
    if layer == "conv1":
        assert len(steps) == 2 and pre == pytest.approx(flat[i], abs=1e-4)
    else:  # through max pooling and ReLU
        assert "max pooling" in steps[2] and "ReLU" in steps[3]
    no_exception(page)
