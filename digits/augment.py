"""Training-time augmentation of 28x28 MNIST-style digits, one batch at a time.

Two styles, both drawn fresh every epoch from the trainer's ``rng``:

- ``shift_rotate`` (``augment=True``): a small random shift and rotation.
- ``writers`` (``augment="writers"``): how other people write and scan, as
  ``digits.preprocess`` leaves it. Preprocessing already fits the ink into a 20x20
  box and centres it by mass, so what still differs in the model's input is the
  rest: independent x and y scale (aspect ratio), shear (slant), a small rotation
  and shift, elastic wobble of the strokes, thicker and thinner strokes, and
  digits whose ink box was stretched to fill a square (a tight crop resized
  without keeping the aspect ratio, which preprocessing narrows to 0.8 x height).

Each style resamples the whole batch with one ``map_coordinates`` call.

``european_styles`` is a data step, not a batch step, since it needs the labels:
it gives some training 1s a flag and some 7s a crossbar, as many European writers
draw them. Its strokes are drawn here, by code of its own: the test suite's
generator of such digits only measures, and is never used to make training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SHIFT = 2.0  # pixels, in each direction
MAX_ROTATION = 10.0  # degrees


def shift_rotate(
    images: np.ndarray,
    rng: np.random.Generator,
    max_shift: float = MAX_SHIFT,
    max_rotation: float = MAX_ROTATION,
) -> np.ndarray:
    """Randomly shift and rotate each image about its centre, bilinearly.

    images : ndarray (N, H, W), float. Returns a new float32 array of the same shape.
    One ``map_coordinates`` call resamples the whole batch.
    """
    # Imported here: SciPy takes 0.4 s to import, and most callers never augment.
    from scipy import ndimage

    n, h, w = images.shape
    theta = np.deg2rad(rng.uniform(-max_rotation, max_rotation, n))
    shift = rng.uniform(-max_shift, max_shift, (n, 2))
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    rows, cols = rows - (h - 1) / 2, cols - (w - 1) / 2
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    # Output pixel (r, c) reads input at R(-theta) . (r, c) - shift.
    src_r = cos * rows - sin * cols + (h - 1) / 2 - shift[:, 0, None, None]
    src_c = sin * rows + cos * cols + (w - 1) / 2 - shift[:, 1, None, None]
    src_n = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], src_r.shape)
    coords = np.stack([src_n, src_r, src_c])
    out = ndimage.map_coordinates(images, coords, order=1, mode="constant", cval=0.0)
    return out.astype(np.float32, copy=False)


# -- writers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Writers:
    """How far each change of ``writers`` goes; one field per component."""

    x_scale: tuple[float, float] = (0.7, 1.3)  # width factor, drawn log-uniformly
    y_scale: tuple[float, float] = (0.85, 1.15)  # height factor, independently
    shear: float = 0.3  # slant: columns move by up to 0.3 px per row (about 17 deg)
    rotation: float = 10.0  # degrees
    shift: float = 2.0  # pixels
    elastic: float = 1.2  # largest displacement of the coarse grid's knots, pixels
    elastic_knots: int = 4  # knots per side of that grid: bends, not pixel noise
    thick: float = 0.15  # share of images with strokes dilated (3x3: about +2 px)
    thin: float = 0.15  # share with strokes eroded (2x2: about -1 px)
    stretched: float = 0.1  # share whose ink box is stretched to STRETCHED_BOX
    max_stretch: float = 6.0  # a 1 three pixels wide widens at most 6x


# The box preprocessing leaves a digit that filled a square image: the 20x20 box,
# narrowed to MNIST's median width/height (digits.preprocess, issue 18 item 1).
STRETCHED_BOX = (20.0, 16.0)  # (height, width), pixels
INK = 0.2  # a pixel at or above this counts as ink when measuring the ink box
WRITERS = Writers()


def ink_box(images: np.ndarray) -> np.ndarray:
    """(N, 4) float: top, bottom, left, right of each image's ink (inclusive);
    the whole image for a blank one. images : (N, H, W) in [0, 1]."""
    _, h, w = images.shape
    ink = images >= INK
    rows, cols = ink.any(axis=2), ink.any(axis=1)  # (N, H), (N, W)
    top = np.argmax(rows, axis=1)
    bottom = h - 1 - np.argmax(rows[:, ::-1], axis=1)
    left = np.argmax(cols, axis=1)
    right = w - 1 - np.argmax(cols[:, ::-1], axis=1)
    blank = ~rows.any(axis=1)
    box = np.stack([top, bottom, left, right], axis=1).astype(np.float32)
    box[blank] = (0, h - 1, 0, w - 1)
    return box


def _linear_upsampler(knots: int, size: int) -> np.ndarray:
    """(size, knots) weights that interpolate ``knots`` values linearly across
    ``size`` pixels: a coarse random grid becomes a smooth displacement field."""
    at = np.linspace(0, knots - 1, size)[:, None]  # each pixel's place on the grid
    return np.maximum(0, 1 - np.abs(at - np.arange(knots)[None, :])).astype(np.float32)


def writers(
    images: np.ndarray, rng: np.random.Generator, spec: Writers = WRITERS
) -> np.ndarray:
    """Write each digit as another person might: scale x and y apart, slant,
    rotate, shift, bend, and make strokes thicker or thinner.

    images : ndarray (N, H, W), float in [0, 1]. Returns a new float32 array of the
    same shape, in [0, 1]. All random numbers come from ``rng``, in a fixed order,
    so one seed gives one result. One ``map_coordinates`` call resamples the batch;
    a grey dilation and a grey erosion each run once, on their share of it.
    """
    from scipy import ndimage

    n, h, w = images.shape
    # -- one affine map per image, from the output back to the input -------------
    log_sx = rng.uniform(*np.log(spec.x_scale), n)
    log_sy = rng.uniform(*np.log(spec.y_scale), n)
    shear = rng.uniform(-spec.shear, spec.shear, n)
    theta = np.deg2rad(rng.uniform(-spec.rotation, spec.rotation, n))
    shift = rng.uniform(-spec.shift, spec.shift, (n, 2))  # (N, 2): rows, columns
    stretched = rng.random(n) < spec.stretched
    sx, sy = np.exp(log_sx), np.exp(log_sy)
    # The centre each image is scaled about: the image's (MNIST centres the ink's
    # mass there), or for a stretched digit its ink box's, which fills STRETCHED_BOX.
    centre = np.full((n, 2), [(h - 1) / 2, (w - 1) / 2])
    if stretched.any():
        box = ink_box(images[stretched])
        height, width = box[:, 1] - box[:, 0] + 1, box[:, 3] - box[:, 2] + 1
        sy[stretched] = STRETCHED_BOX[0] / height
        sx[stretched] = np.minimum(STRETCHED_BOX[1] / width, spec.max_stretch)
        centre[stretched] = np.stack(
            [(box[:, 0] + box[:, 1]) / 2, (box[:, 2] + box[:, 3]) / 2], axis=1
        )
    # Forward map (input offset from centre -> output offset), rows then columns:
    # scale, then slant (a column shift growing with the row), then rotate.
    cos, sin = np.cos(theta), np.sin(theta)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    slant = np.zeros((n, 2, 2))
    slant[:, 0, 0] = slant[:, 1, 1] = 1
    slant[:, 1, 0] = shear
    scale = np.zeros((n, 2, 2))
    scale[:, 0, 0], scale[:, 1, 1] = sy, sx
    back = np.linalg.inv(rotate @ slant @ scale).astype(np.float32)  # (N, 2, 2)

    # -- elastic: a smooth random displacement field per image ---------------------
    knots = rng.normal(
        0, spec.elastic / 2, (n, 2, spec.elastic_knots, spec.elastic_knots)
    )
    knots = np.clip(knots, -spec.elastic, spec.elastic).astype(np.float32)
    up_r = _linear_upsampler(spec.elastic_knots, h)
    up_c = _linear_upsampler(spec.elastic_knots, w)
    bend = up_r @ knots @ up_c.T  # (N, 2, H, W)

    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    # Output pixel p reads the input at centre + back . (p - image centre - shift),
    # then moved by the bend.
    d_r = rows[None] - (h - 1) / 2 - shift[:, 0, None, None].astype(np.float32)
    d_c = cols[None] - (w - 1) / 2 - shift[:, 1, None, None].astype(np.float32)
    src_r = back[:, 0, 0, None, None] * d_r + back[:, 0, 1, None, None] * d_c
    src_c = back[:, 1, 0, None, None] * d_r + back[:, 1, 1, None, None] * d_c
    src_r += centre[:, 0, None, None].astype(np.float32) + bend[:, 0]
    src_c += centre[:, 1, None, None].astype(np.float32) + bend[:, 1]
    src_n = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], src_r.shape)
    out = ndimage.map_coordinates(
        images.astype(np.float32, copy=False),
        np.stack([src_n, src_r, src_c]),
        order=1,
        mode="constant",
        cval=0.0,
    )

    # -- stroke thickness ----------------------------------------------------------
    pick = rng.random(n)
    thick = pick < spec.thick
    thin = (pick >= spec.thick) & (pick < spec.thick + spec.thin)
    if thick.any():
        out[thick] = ndimage.grey_dilation(out[thick], size=(1, 3, 3))
    if thin.any():
        eroded = ndimage.grey_erosion(out[thin], size=(1, 2, 2))
        # Erosion also dims what it leaves of a stroke's anti-aliased edge: bring
        # the darkest ink back to full strength, as preprocessing's contrast would.
        peak = eroded.max(axis=(1, 2), keepdims=True)
        out[thin] = np.where(peak > INK, eroded / np.maximum(peak, 1e-6), out[thin])
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


# -- European 1s and 7s -----------------------------------------------------------


def _segments(
    shape: tuple[int, int], start: np.ndarray, end: np.ndarray, width: np.ndarray
) -> np.ndarray:
    """(M, H, W) anti-aliased straight strokes, one per image, from ``start`` to
    ``end`` ((M, 2) rows, columns) of ``width`` (M,) pixels: 1 within half the
    width of the segment, fading to 0 over one pixel."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    p = np.stack([rows, cols], -1)[None]  # (1, H, W, 2)
    a, b = start[:, None, None, :], end[:, None, None, :]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-6), 0, 1)
    dist = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)  # (M, H, W)
    return np.clip(width[:, None, None] / 2 + 0.5 - dist, 0, 1).astype(np.float32)


def add_flags(ones: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1s with a European flag: a stroke from the top of the 1, going down and
    left (a bit under a third to over half of the 1's height long, 20-50 degrees
    below the horizontal, and at least 20 degrees flatter than a slanted 1's own
    stroke, which it would otherwise only thicken), as wide as a pen stroke.

    ones : (M, H, W) floats in [0, 1]. Returns a new float32 array.
    """
    m, h, w = ones.shape
    box = ink_box(ones)
    top, bottom = box[:, 0], box[:, 1]

    def ink_column(first: np.ndarray) -> np.ndarray:
        """(M,) the centre of the ink in the two rows from ``first`` (M,) down."""
        rows = np.clip(first[:, None] + np.arange(2), 0, h - 1).astype(int)
        weight = ones[np.arange(m)[:, None], rows].sum(axis=1) + 1e-6  # (M, W)
        return (weight * np.arange(w)).sum(axis=1) / weight.sum(axis=1)

    start_c = ink_column(top)
    height = bottom - top + 1
    # The 1's own stroke, in degrees below the horizontal to the left (90: upright).
    stem = np.rad2deg(np.arctan2(height, start_c - ink_column(bottom - 1)))
    length = rng.uniform(0.3, 0.55, m) * height
    angle = np.deg2rad(np.clip(np.minimum(rng.uniform(20, 50, m), stem - 20), 5, 50))
    start = np.stack([top + 0.5, start_c], axis=1)
    end = start + np.stack([np.sin(angle), -np.cos(angle)], axis=1) * length[:, None]
    width = rng.uniform(1.8, 3.0, m)
    return np.maximum(ones, _segments((h, w), start, end, width))


def add_crossbars(sevens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """7s with a European crossbar: a short stroke across the stem, a little
    under half way down (40-60% of the 7's height), tilted up to 8 degrees,
    reaching 2.5-5 px to the left and 2-4.5 px to the right of the stem.

    sevens : (M, H, W) floats in [0, 1]. Returns a new float32 array.
    """
    m, h, w = sevens.shape
    box = ink_box(sevens)
    row = box[:, 0] + rng.uniform(0.4, 0.6, m) * (box[:, 1] - box[:, 0])
    # The stem's column at that row: the ink's centre along it.
    line = sevens[np.arange(m), np.clip(np.rint(row), 0, h - 1).astype(int)]  # (M, W)
    stem = (line * np.arange(w)).sum(axis=1) / np.maximum(line.sum(axis=1), 1e-6)
    stem = np.where(line.sum(axis=1) > 0.5, stem, (box[:, 2] + box[:, 3]) / 2)
    left, right = rng.uniform(2.5, 5.0, m), rng.uniform(2.0, 4.5, m)
    tilt = np.tan(np.deg2rad(rng.uniform(-8, 8, m)))
    start = np.stack([row + tilt * left, stem - left], axis=1)
    end = np.stack([row - tilt * right, stem + right], axis=1)
    width = rng.uniform(1.8, 3.0, m)
    return np.maximum(sevens, _segments((h, w), start, end, width))


# Of the training 1s given a flag, and of the 7s a crossbar. 0.3 left 11% of
# flagged 1s read as 7 (benchmarks/README.md, issue 18 item 2); 0.5 did not.
EUROPEAN_SHARE = 0.5


def european_styles(
    x: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    shape: tuple[int, int],
    share: float = EUROPEAN_SHARE,
) -> np.ndarray:
    """A copy of the training images ``x``, (N, H*W) or (N, H, W), in which
    ``share`` of the 1s carry a flag and ``share`` of the 7s a crossbar, picked at
    random.

    ``labels`` (N,) are the digits themselves (not class indices). uint8 rows stay
    uint8 (0-255), float rows stay floats in [0, 1].
    """
    out = x.copy()
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    for digit, draw in ((1, add_flags), (7, add_crossbars)):
        rows = np.flatnonzero((labels == digit) & (rng.random(len(x)) < share))
        if not rows.size:
            continue
        images = x[rows].reshape(len(rows), *shape).astype(np.float32) / scale
        drawn = draw(images, rng).reshape(x[rows].shape) * scale
        out[rows] = np.rint(drawn) if x.dtype == np.uint8 else drawn
    return out


# -- the network's input ----------------------------------------------------------

# The augmentations ``network_input`` applies, by name; ``augment=True`` is "shift".
STYLES = {"shift": shift_rotate, "writers": writers}


def network_input(
    xb: np.ndarray,
    rng: np.random.Generator | None,
    *,
    input_shape: tuple[int, ...],
    images: bool,
    style: str = "shift",
) -> np.ndarray:
    """Raw rows (n, features) -> network input, augmented when given an ``rng``.

    uint8 pixels are scaled to [0, 1]. Returns (n, h, w, 1) float32 for a network
    with conv layers (``images``), (n, features) otherwise. ``style`` names the
    augmentation (a key of ``STYLES``). A module-level function, so that a
    training process can be handed it.
    """
    x = xb.astype(np.float32)
    if xb.dtype == np.uint8:
        x *= np.float32(1 / 255)
    if len(input_shape) == 1:
        return x
    x = x.reshape(len(x), *input_shape)
    if rng is not None:
        x = STYLES[style](x, rng)
    return x[..., None] if images else x.reshape(len(x), -1)
