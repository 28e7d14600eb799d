"""The network beside a drawing, in Chromium (issue 19, items 3 and 4): Draw's
layer strips (on by default) follow the drawing, and a clicked feature-map pixel
is worked out number by number, its sum plus bias equal to the value the map
shows, on Draw and on Inspect.

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
    choose,
    clear_canvas,
    no_exception,
    open_page,
    prediction_of,
    stroke,
)
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

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


def strip_picture(page: Page, key: str) -> str:
    """The address of the picture of the strip with key ``key`` (a new picture,
    a new address: Streamlit names its media files by their content)."""
    picture = page.locator(f".st-key-{key} img")
    expect(picture).to_be_visible(timeout=PAGE_MS)
    return picture.get_attribute("src")


def pick_map(page: Page, layer: str, channel: int) -> None:
    """Pick map ``channel`` of ``layer`` with the pickers above the enlarged map."""
    box = page.get_by_role("combobox", name="Layer", exact=True)
    expect(box).to_be_visible(timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    for _ in range(3):  # a late rerun (the canvas's) may close the list again
        box.click()
        option = page.get_by_role("option").filter(has_text=layer).first
        try:
            option.click(timeout=5_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    expect(box).to_have_value(layer, timeout=PAGE_MS)
    box = page.get_by_label(re.compile(r"^Map \(0 to \d+\)$"))
    box.fill(str(channel))
    box.press("Enter")
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def check_pixel(page: Page, key: str, layer: str, channel: int) -> None:
    """Click the brightest pixel of the enlarged map with key ``key`` (map
    ``channel`` of ``layer``): its steps add up, and end at the value shown."""
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


def draw(page: Page, shape, digit: str) -> None:
    stroke(page, shape)
    expect(prediction_of(page, "default-cnn")).to_have_text(digit, timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)


def test_the_layer_strips_change_with_the_drawing(server, page):
    open_page(page, f"{server.url}/draw", "Draw")
    canvas(page).wait_for()
    draw(page, ONE, "1")
    # On by default: every layer, beside the answer, after the first stroke.
    one = {name: strip_picture(page, STRIP + name) for name in STRIPS}
    scores = page.locator(f".st-key-{STRIP}dense2")
    expect(scores).to_contain_text("Highest here: 1")

    clear_canvas(page)
    draw(page, SEVEN, "7")
    seven = {name: strip_picture(page, STRIP + name) for name in STRIPS}
    for name in STRIPS:
        assert seven[name] != one[name], f"{name} shows the same for a 1 and a 7"
    expect(scores).to_contain_text("Highest here: 7")

    # The scikit-learn MLP's hidden layers, from its weights.
    whose = page.get_by_role("radiogroup", name="Whose layers")
    whose.get_by_text("default-mlp").click()
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    strip_picture(page, "draw-strip-default-mlp-hidden1")
    strip_picture(page, "draw-strip-default-mlp-output")
    no_exception(page)

    # Turned off, the layers go (and stay off for the session's next drawing).
    page.get_by_text("Show each layer for this drawing").click()
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    expect(page.locator(f".st-key-{STRIP}conv1")).to_have_count(0)


@pytest.mark.parametrize("layer", ["conv1", "relu1"])
def test_a_clicked_pixel_adds_up_to_the_value_shown(server, page, layer):
    open_page(page, f"{server.url}/draw", "Draw")
    canvas(page).wait_for()
    draw(page, SEVEN, "7")
    channel = 5
    pick_map(page, layer, channel)
    check_pixel(page, f"draw-map-default-cnn-{layer}-{channel}", layer, channel)
    no_exception(page)


def test_inspect_a_clicked_map_and_pixel_add_up(server, page):
    """On Inspect, a click on a map of a layer's strip enlarges it, and a click
    on one of its pixels works it out, for a test image."""
    open_page(page, f"{server.url}/inspect", "Inspect")
    choose(page, "Model", "default-cnn")
    layer, channel = "relu1", 7
    page.get_by_role("tab", name=re.compile(f"^{layer} ")).click()
    click_point(page, f"act-{layer}", channel)
    key = f"inspect-map-default-cnn-{layer}-{channel}"
    expect(page.locator(f".st-key-{key}")).to_be_visible(timeout=PAGE_MS)
    page.wait_for_selector(IDLE, timeout=PAGE_MS)
    check_pixel(page, key, layer, channel)
    # The strip's map and the enlarged map show the same numbers.
    strip, enlarged = shown(page, f"act-{layer}"), shown(page, key)
    h = len(enlarged)
    w = len(enlarged[0])
    top, left = (channel // 16) * (h + 1), (channel % 16) * (w + 1)
    tile = [v for r in strip[top : top + h] for v in r[left : left + w]]
    assert tile == pytest.approx([v for r in enlarged for v in r], abs=1e-3)
    no_exception(page)
