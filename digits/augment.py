"""Training-time augmentation: random small shifts and rotations of digit images."""

from __future__ import annotations

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


def network_input(
    xb: np.ndarray,
    rng: np.random.Generator | None,
    *,
    input_shape: tuple[int, ...],
    images: bool,
) -> np.ndarray:
    """Raw rows (n, features) -> network input, augmented when given an ``rng``.

    uint8 pixels are scaled to [0, 1]. Returns (n, h, w, 1) float32 for a network
    with conv layers (``images``), (n, features) otherwise. A module-level function,
    so that a training process can be handed it.
    """
    x = xb.astype(np.float32)
    if xb.dtype == np.uint8:
        x *= np.float32(1 / 255)
    if len(input_shape) == 1:
        return x
    x = x.reshape(len(x), *input_shape)
    if rng is not None:
        x = shift_rotate(x, rng)
    return x[..., None] if images else x.reshape(len(x), -1)
