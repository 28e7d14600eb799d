"""Pictures that are not digits, to see what a "not sure" rule lets through.

`digits.sure` picks its thresholds on the validation digits alone; these
pictures are what the rule itself (which image statistics it checks) was chosen
against, and what ``digits.sure`` reports it refuses. They are drawn by this
code only: the non-digit test images of the test suite are made by
other code, with other shapes and seeds, so a rule is never scored on the very
pictures it was built with.

Each picture is what a person might upload or draw: a (H, W) uint8 grayscale
array, dark ink on light paper or light ink on black. The kinds:

- ``specks``: one to five small blobs scattered over the page;
- ``static``: a rectangle of salt-and-pepper or blurred noise;
- ``tangle``: a long random walk of short strokes, often across the whole page;
- ``hatching``: parallel lines, or a grid of them, over part of the page;
- ``blot``: a filled ellipse or rectangle, a smudge of solid ink;
- ``glyph``: a letter or sign unlike any digit (H, N, V, Y, #, *, +) in strokes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# Glyphs unlike any digit, as strokes in a unit box (x right, y down).
GLYPHS = {
    "H": [[(0.1, 0.0), (0.1, 1.0)], [(0.9, 0.0), (0.9, 1.0)], [(0.1, 0.5), (0.9, 0.5)]],
    "N": [[(0.1, 1.0), (0.1, 0.0), (0.9, 1.0), (0.9, 0.0)]],
    "V": [[(0.0, 0.0), (0.5, 1.0), (1.0, 0.0)]],
    "Y": [[(0.0, 0.0), (0.5, 0.5), (1.0, 0.0)], [(0.5, 0.5), (0.5, 1.0)]],
    "#": [
        [(0.3, 0.0), (0.3, 1.0)],
        [(0.7, 0.0), (0.7, 1.0)],
        [(0.0, 0.3), (1.0, 0.3)],
        [(0.0, 0.7), (1.0, 0.7)],
    ],
    "*": [
        [(0.5, 0.0), (0.5, 1.0)],
        [(0.07, 0.25), (0.93, 0.75)],
        [(0.07, 0.75), (0.93, 0.25)],
    ],
    "+": [[(0.5, 0.05), (0.5, 0.95)], [(0.05, 0.5), (0.95, 0.5)]],
}


def _lines(side: int, lines: list, width: float) -> np.ndarray:
    """(side, side) float ink 0..1 of polylines `width` pixels wide."""
    layer = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(layer)
    for points in lines:
        draw.line([tuple(p) for p in points], fill=255, width=max(1, round(width)))
    return ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255, 0.7)


def specks(side: int, rng: np.random.Generator) -> np.ndarray:
    """One to five small round blobs, each 1-8% of the page across."""
    layer = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 6))):
        r = max(1.0, rng.uniform(0.005, 0.04) * side)
        x, y = rng.uniform(0.1, 0.9, 2) * side
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(layer, np.float32) / 255


def static(side: int, rng: np.random.Generator) -> np.ndarray:
    """A rectangle of noise (salt and pepper, or blurred), 20-100% of each side."""
    ink = np.zeros((side, side), np.float32)
    h, w = (np.maximum(4, rng.uniform(0.2, 1.0, 2) * side)).astype(int)
    y, x = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
    if rng.random() < 0.5:
        patch = (rng.random((h, w)) < rng.uniform(0.1, 0.6)).astype(np.float32)
    else:
        patch = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 2))
        patch = np.clip((patch - patch.mean()) / (patch.std() + 1e-6) * 0.4 + 0.5, 0, 1)
    ink[y : y + h, x : x + w] = patch
    return ink


def tangle(side: int, rng: np.random.Generator) -> np.ndarray:
    """A random walk of 15-60 short steps, which crosses itself many times."""
    steps = int(rng.integers(15, 61))
    turns = np.cumsum(rng.normal(0, 1.2, steps))
    length = rng.uniform(0.05, 0.15) * side
    xy = [rng.uniform(0.3, 0.7, 2) * side]
    for turn in turns:
        step = xy[-1] + length * np.array([math.cos(turn), math.sin(turn)])
        xy.append(np.clip(step, 0.02 * side, 0.98 * side))
    return _lines(side, [xy], rng.uniform(0.01, 0.05) * side)


def hatching(side: int, rng: np.random.Generator) -> np.ndarray:
    """4-12 parallel lines at a random angle, crossed by a second set half the
    time, over 50-100% of the page."""
    count = int(rng.integers(4, 13))
    reach = rng.uniform(0.5, 1.0) * side / 2
    centre = np.array([side / 2, side / 2])
    lines = []
    for angle in [rng.uniform(0, math.pi)] * (1 + (rng.random() < 0.5)):
        angle += len(lines) and rng.uniform(0.6, 1.2)
        along = np.array([math.cos(angle), math.sin(angle)])
        across = np.array([-along[1], along[0]])
        for offset in np.linspace(-reach, reach, count):
            middle = centre + offset * across
            lines.append([middle - reach * along, middle + reach * along])
    return _lines(side, lines, rng.uniform(0.01, 0.03) * side)


def blot(side: int, rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse or rectangle, 20-90% of the page across."""
    layer = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(layer)
    w, h = rng.uniform(0.2, 0.9, 2) * side
    x, y = rng.uniform(0, side - w), rng.uniform(0, side - h)
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape((x, y, x + w, y + h), fill=255)
    return ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255, 1.0)


def glyph(side: int, rng: np.random.Generator) -> np.ndarray:
    """One of `GLYPHS`, 40-85% of the page tall, its points moved by up to 5%."""
    name = list(GLYPHS)[int(rng.integers(len(GLYPHS)))]
    size = rng.uniform(0.4, 0.85) * side
    corner = rng.uniform(0.1, 0.9, 2) * (side - size)
    lines = [
        (np.array(stroke) + rng.uniform(-0.05, 0.05, (len(stroke), 2))) * size + corner
        for stroke in GLYPHS[name]
    ]
    return _lines(side, lines, rng.uniform(0.06, 0.14) * size)


# Every kind of non-digit by name.
KINDS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "specks": specks,
    "static": static,
    "tangle": tangle,
    "hatching": hatching,
    "blot": blot,
    "glyph": glyph,
}


def non_digit_pictures(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """n non-digit pictures (the kinds in turn) and the kind of each.

    Each is a (H, W) uint8 array, 28 to 160 pixels square; half dark ink on
    light paper (grey levels 190-245 and 10-90), half light ink on black.
    """
    rng = np.random.default_rng(seed)
    makers = list(KINDS.items())
    images, kinds = [], []
    for k in range(n):
        kind, make = makers[k % len(makers)]
        side = 28 if rng.random() < 0.2 else int(rng.integers(32, 161))
        ink = np.clip(make(side, rng), 0, 1)
        if rng.random() < 0.5:
            paper, pen = rng.uniform(190, 245), rng.uniform(10, 90)
            gray = paper - (paper - pen) * ink + rng.normal(0, 1.5, ink.shape)
        else:
            gray = 255 * ink
        images.append(np.clip(np.rint(gray), 0, 255).astype(np.uint8))
        kinds.append(kind)
    return images, kinds
