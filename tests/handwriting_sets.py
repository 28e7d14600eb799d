"""Test sets of digits as other people write, crop and upload them (issue 18).

Every digit set is made at run time from MNIST's TEST digits, never its training
images: each generator reads only ``x_test`` and ``y_test`` of the dataset it is
given, and records which test digit each image came from in ``sources``. Nothing
here is saved as image files, and nothing in ``digits/`` imports it: these
generators only measure. Training augmentation (issue 18, item 2) must be
written separately, in ``digits/``, so that a model is never scored on the very
transformations it was trained with.

Each image is what a user would upload: a (H, W) uint8 grayscale array, mostly
dark ink on light paper. The sets:

- ``rendered``: the control. A test digit as it is, scaled up 3-8x on paper
  with its MNIST margin; the project's preprocessing was built for these.
- ``tight``: cropped to the ink with no margin (at the level where the ink
  reaches 20-50% of its darkness, as a person crops a photo), scaled up 2.5-8x,
  dark on light: the ink touches all four edges.
- ``stretched``: the bounding box of the ink (at 20% of its strength) resized
  to fill a square of 28 to 140 pixels, its aspect ratio not kept, as a plain
  ``resize((28, 28))`` of a cropped digit does; half dark on light, half light
  on dark.
- ``european``: test 1s given a long flag stroke down and left from their top,
  and test 7s given a crossbar through their stem, drawn with Pillow's
  ImageDraw at the digit's own stroke width.
- ``thick`` and ``thin``: strokes widened (grey dilation) by 0.6-1.2x their
  width, or narrowed (grey erosion) to about half their width.
- ``non_digits``: no digit at all: dots, squares of noise, scribbles across the
  image, and the letters A, K, M, W and X drawn in strokes. Their label is
  `NOT_A_DIGIT`.

Every generator is ``generator(dataset, n, seed) -> HandwritingSet``; ``SETS``
lists them by name. The same dataset, n and seed give the same images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from digits.errors import NoDigitFound
from digits.preprocess import preprocess

NOT_A_DIGIT = -1  # the label of a non-digit image

# Paper and pen: the grey levels of dark ink on light paper.
PAPER = (205, 250)
PEN = (5, 70)
PAPER_NOISE = 2.0  # sensor noise, grey levels
MARGIN = 4  # pixels of MNIST frame kept around a digit before scaling up
WORK_SCALE = 4  # strokes are drawn, widened or narrowed at this scale
VISIBLE = 0.2  # ink this dark is what a person cropping a picture sees


class TestDigits(Protocol):
    """What the generators read from a dataset: the test split only."""

    x_test: np.ndarray  # (n, 28, 28) uint8, white ink on black
    y_test: np.ndarray  # (n,) int64


@dataclass(frozen=True)
class HandwritingSet:
    """Images a user could upload, with what each one is.

    images : list of n (H, W) uint8 grayscale arrays (sizes vary).
    labels : (n,) int64, the digit, or `NOT_A_DIGIT`.
    sources : (n,) int64, the index of the MNIST test digit each image was made
        from, or -1 for a drawn non-digit.
    kinds : (n,) str, what each image is ("digit", "1-flag", "7-crossbar",
        "dot", "noise", "scribble", "letter-A", ...).
    dark_ink : (n,) bool, True for dark ink on light paper, False for light
        ink on black.
    """

    name: str
    images: list[np.ndarray]
    labels: np.ndarray
    sources: np.ndarray
    kinds: np.ndarray
    dark_ink: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


# ---------------------------------------------------------------- helpers


def _pick(
    dataset: TestDigits, n: int, rng: np.random.Generator, digits=None
) -> np.ndarray:
    """n distinct indices into the test split (of the given digits only)."""
    pool = np.arange(len(dataset.y_test))
    if digits is not None:
        pool = pool[np.isin(dataset.y_test, digits)]
    if not 0 < n <= len(pool):
        raise ValueError(f"Asked for {n} images; the test split has {len(pool)}.")
    return np.sort(rng.choice(pool, n, replace=False))


def _resize(ink: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w) float ink 0..1 resized to (height, width) with Lanczos, clipped."""
    image = Image.fromarray(ink.astype(np.float32), mode="F")
    return np.clip(np.asarray(image.resize((width, height), Image.LANCZOS)), 0, 1)


def _large(digit: np.ndarray, scale: float = WORK_SCALE) -> np.ndarray:
    """A 28x28 uint8 test digit with a `MARGIN`, scaled up: float ink 0..1."""
    padded = np.pad(digit, MARGIN).astype(np.float32) / 255
    side = round(padded.shape[0] * scale)
    return _resize(padded, side, side)


def _on_paper(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float ink 0..1 as dark pen on light paper with a little sensor noise."""
    paper = rng.uniform(*PAPER)
    pen = rng.uniform(*PEN)
    gray = paper - (paper - pen) * ink + rng.normal(0, PAPER_NOISE, ink.shape)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _light_on_dark(ink: np.ndarray) -> np.ndarray:
    """Float ink 0..1 as white ink on black, as MNIST stores it."""
    return np.clip(np.rint(ink * 255), 0, 255).astype(np.uint8)


def stroke_width(ink: np.ndarray) -> float:
    """The typical stroke width of float ink 0..1, pixels: twice the distance
    from the stroke's middle to its half-level edge."""
    mask = ink >= 0.5
    if not mask.any():
        return 0.0
    depth = ndimage.distance_transform_edt(mask)
    return 2 * float(np.percentile(depth[mask], 90))


def _disk(radius: float) -> np.ndarray:
    reach = math.ceil(radius)
    y, x = np.ogrid[-reach : reach + 1, -reach : reach + 1]
    return x**2 + y**2 <= radius**2


def _stroke_layer(shape: tuple[int, int], lines, width: float) -> np.ndarray:
    """Float ink 0..1 of polylines drawn with round ends, slightly blurred so
    their edges are as soft as the scaled-up digit's."""
    layer = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(layer)
    radius = width / 2
    for points in lines:
        draw.line(points, fill=255, width=max(1, round(width)), joint="curve")
        for x, y in points:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255, 1.0)


def _make(
    name: str, images: list, labels, sources, kinds, dark_ink=True
) -> HandwritingSet:
    return HandwritingSet(
        name,
        images,
        np.asarray(labels, dtype=np.int64),
        np.asarray(sources, dtype=np.int64),
        np.asarray(kinds, dtype=str),
        np.broadcast_to(np.asarray(dark_ink, dtype=bool), (len(images),)),
    )


# ---------------------------------------------------------------- digit sets


def rendered(dataset: TestDigits, n: int, seed: int) -> HandwritingSet:
    """The control: test digits with their margin, scaled up 3-8x, on paper."""
    rng = np.random.default_rng(seed)
    index = _pick(dataset, n, rng)
    images = [
        _on_paper(_large(dataset.x_test[i], rng.uniform(3, 8)), rng) for i in index
    ]
    return _make("rendered", images, dataset.y_test[index], index, ["digit"] * n)


def tight(dataset: TestDigits, n: int, seed: int) -> HandwritingSet:
    """Test digits cropped to the ink with no margin, scaled up, dark on light.

    The crop is the bounding box of the ink at 20-50% of its darkness, so the
    ink touches all four edges of the image.
    """
    rng = np.random.default_rng(seed)
    index = _pick(dataset, n, rng)
    images = []
    for i in index:
        ink = _large(dataset.x_test[i], rng.uniform(2.5, 8))
        rows, cols = np.nonzero(ink >= rng.uniform(VISIBLE, 0.5))
        crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        images.append(_on_paper(crop, rng))
    return _make("tight", images, dataset.y_test[index], index, ["digit"] * n)


def stretched(dataset: TestDigits, n: int, seed: int) -> HandwritingSet:
    """Test digits' ink boxes resized to fill a square, aspect ratio not kept.

    The box is where the ink reaches `VISIBLE` strength; the squares' sides
    are 28 to 140 pixels (a third exactly 28, as ``resize((28, 28))``); half
    dark on light paper, half white on black.
    """
    rng = np.random.default_rng(seed)
    index = _pick(dataset, n, rng)
    images = []
    for k, i in enumerate(index):
        digit = dataset.x_test[i].astype(np.float32) / 255
        rows, cols = np.nonzero(digit >= VISIBLE)
        crop = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        side = 28 if k % 3 == 0 else int(rng.integers(29, 141))
        square = _resize(crop, side, side)
        images.append(_on_paper(square, rng) if k % 2 else _light_on_dark(square))
    dark = np.arange(n) % 2 == 1
    return _make("stretched", images, dataset.y_test[index], index, ["digit"] * n, dark)


def _flag(ink: np.ndarray, rng: np.random.Generator) -> list:
    """A European 1's flag: from the top of the stroke, down and to the left,
    30-50% of the digit's height long, 20-45 degrees below horizontal."""
    rows, cols = np.nonzero(ink >= 0.5)
    top = rows.min()
    near_top = rows <= top + 2
    x0, y0 = float(cols[near_top].mean()), float(top)
    length = rng.uniform(0.3, 0.5) * (rows.max() - top + 1)
    angle = math.radians(rng.uniform(20, 45))
    end = (x0 - length * math.cos(angle), y0 + length * math.sin(angle))
    return [[(x0, y0), end]]


def _crossbar(ink: np.ndarray, rng: np.random.Generator) -> list:
    """A European 7's crossbar: through the stem at 50-65% of the digit's
    height, 40-60% of its width long, tilted by up to 6 degrees."""
    mask = ink >= 0.5
    rows, cols = np.nonzero(mask)
    height = rows.max() - rows.min() + 1
    width = cols.max() - cols.min() + 1
    y = int(rows.min() + rng.uniform(0.5, 0.65) * height)
    # The stem is the ink crossing that row (the run nearest the digit's middle
    # if the row crosses more than one stroke).
    while not mask[y].any():
        y -= 1
    runs, count = ndimage.label(mask[y])
    middle = (cols.min() + cols.max()) / 2
    centres = ndimage.mean(np.arange(mask.shape[1]), runs, range(1, count + 1))
    x = float(min(centres, key=lambda c: abs(c - middle)))
    half = rng.uniform(0.2, 0.3) * width
    tilt = math.tan(math.radians(rng.uniform(-6, 6))) * half
    return [[(x - half, y + tilt), (x + half, y - tilt)]]


# Where a European digit's extra stroke goes, by digit.
EXTRA_STROKES = {1: ("1-flag", _flag), 7: ("7-crossbar", _crossbar)}


def european(dataset: TestDigits, n: int, seed: int) -> HandwritingSet:
    """Test 1s with a long flag and 7s with a crossbar (half each), drawn at
    the digit's own stroke width and scaled 3-6x, dark on light."""
    rng = np.random.default_rng(seed)
    index = np.sort(
        np.concatenate(
            [_pick(dataset, n // 2, rng, [1]), _pick(dataset, n - n // 2, rng, [7])]
        )
    )
    images, kinds = [], []
    for i in index:
        ink = _large(dataset.x_test[i])
        kind, extra = EXTRA_STROKES[int(dataset.y_test[i])]
        width = max(stroke_width(ink), 1.5 * WORK_SCALE)
        ink = np.maximum(ink, _stroke_layer(ink.shape, extra(ink, rng), width))
        side = round(ink.shape[0] * rng.uniform(3, 6) / WORK_SCALE)
        images.append(_on_paper(_resize(ink, side, side), rng))
        kinds.append(kind)
    return _make("european", images, dataset.y_test[index], index, kinds)


def _restroke(
    name: str, dataset: TestDigits, n: int, seed: int, thicker: bool
) -> HandwritingSet:
    rng = np.random.default_rng(seed)
    index = _pick(dataset, n, rng)
    images = []
    for i in index:
        ink = _large(dataset.x_test[i])
        width = stroke_width(ink)
        if thicker:
            radius = rng.uniform(0.3, 0.6) * width  # the width grows 1.6-2.2x
            ink = ndimage.grey_dilation(ink, footprint=_disk(radius))
        else:
            radius = rng.uniform(0.2, 0.3) * width  # the width shrinks to about half
            ink = ndimage.grey_erosion(ink, footprint=_disk(radius))
        side = round(ink.shape[0] * rng.uniform(3, 6) / WORK_SCALE)
        images.append(_on_paper(_resize(ink, side, side), rng))
    return _make(name, images, dataset.y_test[index], index, ["digit"] * n)


def thick(dataset: TestDigits, n: int, seed: int) -> HandwritingSet:
    """Test digits with strokes widened by a grey dilation, dark on light."""
    return _restroke("thick", dataset, n, seed, thicker=True)


def thin(dataset: TestDigits, n: int, seed: int) -> HandwritingSet:
    """Test digits with strokes narrowed by a grey erosion, dark on light."""
    return _restroke("thin", dataset, n, seed, thicker=False)


# ---------------------------------------------------------------- non-digits

# Letters unlike any digit, as strokes in a unit box (x right, y down).
LETTERS = {
    "A": [[(0.0, 1.0), (0.5, 0.0), (1.0, 1.0)], [(0.22, 0.6), (0.78, 0.6)]],
    "K": [[(0.1, 0.0), (0.1, 1.0)], [(0.9, 0.0), (0.1, 0.55), (0.9, 1.0)]],
    "M": [[(0.0, 1.0), (0.05, 0.0), (0.5, 0.65), (0.95, 0.0), (1.0, 1.0)]],
    "W": [[(0.0, 0.0), (0.25, 1.0), (0.5, 0.35), (0.75, 1.0), (1.0, 0.0)]],
    "X": [[(0.0, 0.0), (1.0, 1.0)], [(1.0, 0.0), (0.0, 1.0)]],
}


def _dot(side: int, rng: np.random.Generator) -> np.ndarray:
    """A round dot 2-12% of the image across (on 28 pixels, a 3x3 square)."""
    if side == 28:
        ink = np.zeros((28, 28), np.float32)
        y, x = rng.integers(4, 21, size=2)
        ink[y : y + 3, x : x + 3] = 1
        return ink
    radius = rng.uniform(0.01, 0.06) * side
    centre = rng.uniform(0.25, 0.75, size=2) * side
    return _stroke_layer((side, side), [[tuple(centre)]], 2 * radius)


def _noise(side: int, rng: np.random.Generator) -> np.ndarray:
    """A square of uniform noise, 30-100% of the image across."""
    ink = np.zeros((side, side), np.float32)
    patch = max(3, round(rng.uniform(0.3, 1.0) * side))
    y, x = rng.integers(0, side - patch + 1, size=2)
    ink[y : y + patch, x : x + patch] = rng.uniform(0, 1, (patch, patch))
    return ink


def _scribble(side: int, rng: np.random.Generator) -> np.ndarray:
    """A faint to dark zig-zag of 6-14 random points across the image."""
    points = [tuple(p) for p in rng.uniform(0.05, 0.95, (rng.integers(6, 15), 2))]
    width = rng.uniform(0.01, 0.04) * side
    ink = _stroke_layer(
        (side, side), [[(x * side, y * side) for x, y in points]], width
    )
    return ink * rng.uniform(0.3, 1.0)


def _letter(side: int, rng: np.random.Generator, letter: str) -> np.ndarray:
    """A letter drawn in strokes: 50-80% of the image tall, each point moved by
    up to 4% of its size, turned by up to 10 degrees."""
    size = rng.uniform(0.5, 0.8) * side
    aspect = rng.uniform(0.7, 1.1)
    corner = (side - np.array([size * aspect, size])) * rng.uniform(0.3, 0.7, 2)
    turn = math.radians(rng.uniform(-10, 10))
    rotation = np.array(
        [[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]]
    )
    lines = []
    for stroke in LETTERS[letter]:
        unit = np.array(stroke) + rng.uniform(-0.04, 0.04, (len(stroke), 2))
        xy = (unit - 0.5) @ rotation.T * [size * aspect, size] + 0.5 * np.array(
            [size * aspect, size]
        )
        lines.append([tuple(p) for p in xy + corner])
    width = rng.uniform(0.07, 0.13) * size
    return _stroke_layer((side, side), lines, width)


def non_digits(dataset: TestDigits | None, n: int, seed: int) -> HandwritingSet:
    """Images with no digit: a quarter each dots, noise squares, scribbles and
    letters (A, K, M, W, X in turn), on 28-200 pixel paper. ``dataset`` is not
    read; it is taken so every generator has the same signature."""
    del dataset
    rng = np.random.default_rng(seed)
    images, kinds, dark = [], [], []
    makers: list[tuple[str, Callable]] = [
        ("dot", _dot),
        ("noise", _noise),
        ("scribble", _scribble),
    ]
    letters = list(LETTERS)
    for k in range(n):
        side = 28 if rng.random() < 0.15 else int(rng.integers(40, 201))
        which = k % 4
        if which < 3:
            kind, maker = makers[which]
            ink = maker(side, rng)
        else:
            letter = letters[(k // 4) % len(letters)]
            kind, ink = f"letter-{letter}", _letter(side, rng, letter)
        dark_on_light = rng.random() < 0.5
        images.append(_on_paper(ink, rng) if dark_on_light else _light_on_dark(ink))
        kinds.append(kind)
        dark.append(dark_on_light)
    return _make("non_digits", images, [NOT_A_DIGIT] * n, [-1] * n, kinds, dark)


# Every set by name, in the order the benchmark reports them.
SETS: dict[str, Callable[[TestDigits, int, int], HandwritingSet]] = {
    "rendered": rendered,
    "tight": tight,
    "stretched": stretched,
    "european": european,
    "thick": thick,
    "thin": thin,
    "non_digits": non_digits,
}


# ---------------------------------------------------------------- reading them


def as_png(image: np.ndarray) -> bytes:
    """A (H, W) uint8 image as the bytes of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def model_inputs(images: HandwritingSet) -> tuple[np.ndarray, np.ndarray]:
    """Every image read as `digits predict` reads an uploaded PNG file.

    Returns (n, 28, 28) float32 model inputs (zeros where refused) and a (n,)
    bool mask of the images preprocessing refused with NoDigitFound.
    """
    inputs = np.zeros((len(images), 28, 28), np.float32)
    refused = np.zeros(len(images), bool)
    for k, image in enumerate(images.images):
        try:
            inputs[k] = preprocess(as_png(image), 28, name=f"{k}.png").image
        except NoDigitFound:
            refused[k] = True
    return inputs, refused
