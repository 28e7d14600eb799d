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
- ``glyph``: a letter or sign unlike any digit (H, N, V, Y, #, *, +) in strokes;
- ``zigzag``: a polyline through 5-16 random points, straight or smoothed, faint
  to dark, across most of the page;
- ``typed``: a letter unlike any digit (`TYPED_LETTERS`) in Pillow's own font,
  turned, slanted and thickened.

`digit_or_not` turns these and MNIST's *training* digits into the training set of
the "is it a digit?" detector that `digits.sure` uses (``python -m digits.ood``
trains it); its threshold comes from MNIST's validation digits.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
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


def zigzag(side: int, rng: np.random.Generator) -> np.ndarray:
    """A polyline through 5-16 random points over 60-100% of the page, half of
    them smoothed into curves, 30-100% dark."""
    count = int(rng.integers(5, 17))
    reach = rng.uniform(0.6, 1.0) * side
    start = rng.uniform(0, side - reach, 2)
    points = start + rng.random((count, 2)) * reach
    if rng.random() < 0.5:  # a curve: many points along a smoothed path
        dense = np.linspace(0, count - 1, 8 * count)
        points = np.stack(
            [np.interp(dense, np.arange(count), points[:, k]) for k in (0, 1)], 1
        )
        points = ndimage.gaussian_filter1d(points, 4, axis=0, mode="nearest")
    ink = _lines(side, [points], rng.uniform(0.01, 0.05) * side)
    return ink * rng.uniform(0.3, 1.0)


# Letters that no way of writing a digit looks like (so not O, I, l, S, Z, B, G, q,
# g, b, T, J, L, Q, D, U, C, P, a, e, d, o, s, z, t, y, j, i, c, u).
TYPED_LETTERS = "AEFHKMNRVWXYfhkmnrvwx"


def typed(side: int, rng: np.random.Generator) -> np.ndarray:
    """One of `TYPED_LETTERS` in Pillow's built-in font, 45-90% of the page tall,
    strokes thickened by up to 3 px, turned up to 15 degrees and slanted."""
    letter = TYPED_LETTERS[int(rng.integers(len(TYPED_LETTERS)))]
    font = ImageFont.load_default(size=max(8, round(rng.uniform(0.45, 0.9) * side)))
    layer = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(layer)
    centre = rng.uniform(0.4, 0.6, 2) * side
    thick = int(rng.integers(0, 4))
    draw.text(
        tuple(centre),
        letter,
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=thick,
        stroke_fill=255,
    )
    slant = rng.uniform(-0.3, 0.3)
    layer = layer.transform(
        (side, side),
        Image.Transform.AFFINE,
        (1, slant, -slant * side / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    ).rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
    return ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255, 0.5)


# Every kind of non-digit by name.
KINDS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "specks": specks,
    "static": static,
    "tangle": tangle,
    "hatching": hatching,
    "blot": blot,
    "glyph": glyph,
    "zigzag": zigzag,
    "typed": typed,
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


# -- the "is it a digit?" detector's data -------------------------------------------

DETECTOR_DIR = Path(__file__).parent / "pretrained" / "digit-or-not"
DETECTOR_CLASSES = ("not a digit", "digit")
DETECTOR_SHARE = 0.005  # of MNIST's validation digits the detector may call "not"
THRESHOLD_FILE = "threshold.json"
RAW_SHARE = 0.25  # of the detector's training digits not made into pages
TIGHT_SHARE = 0.2  # of the digits cropped to their ink, no margin (like a photo)
SQUARE_SHARE = 0.15  # ... resized to fill a square, aspect ratio not kept


def digit_page(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 MNIST digit (float ink 0..1) as someone might upload it.

    A (side, side) or cropped uint8 page, 28-160 pixels: with its margin, cropped
    tight to the ink (`TIGHT_SHARE`), or its ink box resized to fill a square
    (`SQUARE_SHARE`); written with another pen (`_pen`); dark on light paper or
    light on black, half each.
    """
    rows, cols = np.nonzero(digit >= 0.2)
    box = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    pick = rng.random()
    side = 28 if rng.random() < 0.2 else int(rng.integers(32, 161))
    if pick < TIGHT_SHARE:
        scale = side / max(box.shape)
        size = (
            max(1, round(box.shape[1] * scale)),
            max(1, round(box.shape[0] * scale)),
        )
        ink = _resized(box, size)
    elif pick < TIGHT_SHARE + SQUARE_SHARE:
        ink = _resized(box, (side, side))
    else:
        ink = _resized(digit, (side, side))
    return _on_page(_pen(ink, side, rng), rng)


PEN_SHARES = (0.15, 0.15, 0.15)  # of the pages written thicker, thinner, fainter


def _pen(ink: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """The ink as another pen might leave it: thicker (a grey dilation by up to
    2.5 MNIST pixels), thinner (an erosion by about one, on pages large enough to
    keep the stroke) or fainter (30-70% as dark), each for its `PEN_SHARES`."""
    pick, pixel = rng.random(), side / 28  # one MNIST pixel, in page pixels
    thick, thin, faint = np.cumsum(PEN_SHARES)
    if pick < thick:
        reach = max(2, round(pixel * rng.uniform(1, 2.5)))
        return ndimage.grey_dilation(ink, size=(reach, reach))
    if pick < thin and pixel >= 2:
        reach = max(2, round(pixel * rng.uniform(0.5, 1)))
        return ndimage.grey_erosion(ink, size=(reach, reach))
    if pick < faint:
        return ink * rng.uniform(0.3, 0.7)
    return ink


def _resized(ink: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float ink resized to ``size`` (width, height) with bilinear filtering."""
    image = Image.fromarray(ink.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), np.float32)


def _on_page(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float ink 0..1 as a uint8 page: dark pen on light paper (grey levels 190-245
    and 10-90, a little noise) or light ink on black, half each."""
    ink = np.clip(ink, 0, 1)
    if rng.random() < 0.5:
        paper, pen = rng.uniform(190, 245), rng.uniform(10, 90)
        gray = paper - (paper - pen) * ink + rng.normal(0, 1.5, ink.shape)
    else:
        gray = 255 * ink
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _model_inputs(pages: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each page as ``digits predict`` reads it: (n, 28, 28) uint8 inputs and the
    (n,) indices of the pages kept (preprocessing finds no digit in some specks)."""
    from digits.preprocess import NoDigitFound, preprocess

    inputs, kept = [], []
    for k, page in enumerate(pages):
        try:
            image = preprocess(page, 28).image
        except NoDigitFound:
            continue
        inputs.append(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
        kept.append(k)
    return np.array(inputs, np.uint8).reshape(-1, 28, 28), np.array(kept, np.int64)


def _read_in_parallel(pages: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`_model_inputs` on two processes (preprocessing is ~5 ms a page)."""
    from joblib import Parallel, delayed

    chunks = [pages[k : k + 2000] for k in range(0, len(pages), 2000)]
    parts = Parallel(n_jobs=2)(delayed(_model_inputs)(c) for c in chunks)
    offsets = np.cumsum([0] + [len(c) for c in chunks])
    inputs = np.concatenate([p[0] for p in parts])
    kept = np.concatenate([p[1] + o for p, o in zip(parts, offsets, strict=False)])
    return inputs, kept


def digit_or_not(mnist, n: int, seed: int, held_out: int | None = None):
    """The detector's dataset: digits against non-digits, all read as uploads.

    mnist : ``digits.data.load_dataset("mnist")``.
    Training images: ``n // 2`` digits drawn from MNIST's training images that
    validation never uses (``validation_split(...).train``), half as written and
    half rewritten by ``augment.writers`` (with European 1s and 7s), each made
    into a page by `digit_page` except `RAW_SHARE` of them, kept as 28x28 model
    inputs already (as a dataset's own images reach a model); and ``n // 2``
    `non_digit_pictures` (seed
    ``seed``). Test images: every MNIST validation digit, as a page, and as many
    non-digits from seed ``seed + 1`` (``held_out``: only the first that many
    validation digits, for a quick look). All (n, 28, 28) uint8 model inputs;
    label 1 is a digit, 0 not. Never reads MNIST's test images.
    """
    from digits import augment
    from digits.data import Dataset, validation_split

    split = validation_split(mnist)
    rng = np.random.default_rng(seed)
    half = n // 2
    rows = rng.choice(split.train, half, replace=False)
    digits = mnist.x_train[rows].astype(np.float32) / 255
    rewritten = rows[half // 2 :]
    digits[half // 2 :] = augment.writers(
        augment.european_styles(
            digits[half // 2 :], mnist.y_train[rewritten], rng, (28, 28)
        ),
        rng,
    )
    raw = rng.random(half) < RAW_SHARE
    validation = mnist.x_train[split.validation[:held_out]].astype(np.float32) / 255
    parts = []
    for digit_images, shapes, shapes_seed in (
        (digits[~raw], half, seed),
        (validation, len(validation), seed + 1),
    ):
        pages = [digit_page(d, rng) for d in digit_images]
        pictures, _ = non_digit_pictures(shapes, shapes_seed)
        inputs, kept = _read_in_parallel(pages + pictures)
        labels = (kept < len(pages)).astype(np.int64)
        parts.append((inputs, labels))
    as_inputs = np.clip(np.rint(digits[raw] * 255), 0, 255).astype(np.uint8)
    parts[0] = (
        np.concatenate([as_inputs, parts[0][0]]),
        np.concatenate([np.ones(len(as_inputs), np.int64), parts[0][1]]),
    )
    return Dataset(
        x_train=parts[0][0],
        y_train=parts[0][1],
        x_test=parts[1][0],
        y_test=parts[1][1],
        class_names=DETECTOR_CLASSES,
        name="digit-or-not",
        checksum=_checksum(mnist, n, seed, held_out),
    )


def _checksum(mnist, n: int, seed: int, held_out: int | None) -> str:
    """What `digit_or_not` made its images from, as SHA-256 hex."""
    source = (
        f"{mnist.checksum}:{n}:{seed}:{held_out}:{RAW_SHARE}:{PEN_SHARES}:"
        f"{','.join(KINDS)}"
    )
    return hashlib.sha256(source.encode()).hexdigest()


# The detector: half the default CNN's width. The "quick" CNN's shape (8 and 16
# 3x3 channels, 64 units, 8 epochs) told only 96.8% of its test images apart.
DETECTOR_PARAMS = {
    "conv_channels": (16, 32),
    "kernel_size": 5,
    "hidden_layer_sizes": (64,),
    "max_iter": 12,
    "augment": True,
}
DETECTOR_IMAGES = 40_000
DETECTOR_SEED = 21


def train_detector(out: Path = DETECTOR_DIR, n: int = DETECTOR_IMAGES) -> dict:
    """Train the detector on `digit_or_not` and save it as a run in ``out``,
    with its threshold in ``out / THRESHOLD_FILE``; return the threshold's record.

    The threshold is the `DETECTOR_SHARE` quantile of the detector's "digit"
    probability on MNIST's validation digits (the detector's test digits), so
    99.5% of them pass; how many of its test non-digits pass is recorded too.
    """
    import json

    from digits import files, store
    from digits.data import load_dataset
    from digits.training import train_run

    dataset = _cached(load_dataset("mnist"), n, DETECTOR_SEED)
    run = train_run(
        "cnn",
        dataset,
        params=DETECTOR_PARAMS,
        out=out,
        overwrite=True,
        command=f"python -m digits.ood --out {out}",
    )
    model = store.load_model(run.path, allow_paths=True)
    digit = model.predict_proba(dataset.x_test.astype(np.float32) / 255)[:, 1]
    is_digit = dataset.y_test == 1
    threshold = float(np.quantile(digit[is_digit], DETECTOR_SHARE))
    record = {
        "min_digit": threshold,
        "share": DETECTOR_SHARE,
        "validation": f"MNIST's validation digits ({int(is_digit.sum()):,} of "
        "the last 5,000 training images), read as uploaded pages",
        "digits_passed": float((digit[is_digit] >= threshold).mean()),
        "non_digits_passed": float((digit[~is_digit] >= threshold).mean()),
        "non_digits": f"{int((~is_digit).sum()):,} pictures of digits.ood, "
        f"seed {DETECTOR_SEED + 1}",
    }
    files.atomic_write(out / THRESHOLD_FILE, json.dumps(record, indent=1).encode())
    return record


def _cached(mnist, n: int, seed: int):
    """`digit_or_not`, kept in the per-user array cache (preprocessing its ~50,000
    pages takes minutes) and read back without pickle."""
    from digits import files
    from digits.data import Dataset, npy_cache_dir

    checksum = _checksum(mnist, n, seed, None)
    path = npy_cache_dir() / f"digit-or-not-{checksum[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as arrays:
            return Dataset(
                **{k: arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")},
                class_names=DETECTOR_CLASSES,
                name="digit-or-not",
                checksum=checksum,
            )
    made = digit_or_not(mnist, n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: getattr(made, k) for k in ("x_train", "y_train", "x_test", "y_test")}
    files.atomic_write(path, _npz_bytes(arrays))
    return made


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=train_detector.__doc__)
    parser.add_argument("--out", type=Path, default=DETECTOR_DIR)
    parser.add_argument("--images", type=int, default=DETECTOR_IMAGES)
    args = parser.parse_args()
    print(train_detector(args.out, args.images))
