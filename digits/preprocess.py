"""Turn any user image into a model input, the way MNIST itself was made.

MNIST's digits were scanned, cleaned, scaled to fit a 20x20 box with
anti-aliasing, and placed in a 28x28 frame so that their centre of mass sits at
the centre. `preprocess` does the same to a canvas drawing or a photo:

1. grayscale (an RGBA canvas is composited over the background its strokes
   contrast with, using alpha);
2. polarity: the background is the majority of the border, so dark ink on light
   paper is inverted to MNIST's white ink on black;
3. cleaning: uneven lighting (a quadratic surface fitted robustly to a coarse
   grid) is subtracted, long ruled or squared-paper lines are suppressed, the
   ink is found with an Otsu threshold, small specks are dropped and pen
   strokes much thinner than MNIST's are thickened; the grey, anti-aliased
   stroke edges are kept. These steps measure the paper around the digit, so
   if the ink reaches an edge of the image (a photo cropped tight to the ink,
   a digit resized to fill its image) the image is cleaned again inside a
   restored margin of paper;
4. crop to the ink's bounding box;
5. scale to fit the box (20x20 for 28x28), keeping the ink's aspect ratio,
   with Pillow's anti-aliasing Lanczos filter. One exception: ink that
   reaches all four edges of a square image was most likely resized to fill
   it (a plain ``resize((28, 28))``), which loses its proportions; if wider
   than MNIST's median digit (`TYPICAL_ASPECT`, width 0.8 x height) it is
   narrowed to that first, so a 1 squashed into a square slab reads as a 1
   more often. Any other wide or tall digit keeps its own proportions;
6. place in the frame, centred on the centre of mass (or on the bounding box for
   the 8x8 sklearn digits, which fill their frame).

An MNIST digit is a fixed point: its ink already spans exactly 20 pixels and its
centre of mass already rounds to (14, 14), so it comes back unchanged.

Every step is returned in a `Preprocessed` so the Draw page can show them.
Files and uploads are decoded by Pillow only (never unpickled) and restricted to
the formats in `FORMATS`. Reads are bounded: a path must be a regular file (not
a directory, device, FIFO or socket, which could block or never end) and at
most `MAX_BYTES` + 1 bytes of any source are read; the pixel count is checked
against `MAX_PIXELS` from the header, before decoding. 16-bit, 32-bit and float
grayscale, palettes with transparency and CMYK are converted; animations give
their first frame; EXIF rotation is applied.

Left out: perspective correction, rotated grids (only lines within about two
degrees of horizontal or vertical count as grid lines), photos that show the
table beyond the paper's edge, and the proportions of a digit resized to fill
an image that is not square (nothing tells them from a genuinely wide digit).
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from digits import files
from digits.errors import NoDigitFound, PreprocessError

# Limits on what a user can upload.
MAX_BYTES = 20 * 1024 * 1024  # 20 MiB file
MAX_PIXELS = 4096 * 4096  # decoded size, checked before decoding
# Not TIFF: Pillow decodes it with libtiff, which prints to stderr on damaged
# files and has a long record of memory-safety bugs; a scan saves as PNG too.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MIN_SIDE = 8  # pixels, the longer side: the sklearn digits are 8x8

# The cleaning runs with the image's longer side reduced to at most this: the
# digit ends up 20 pixels tall, so more only costs time.
WORK_SIDE = 192

# Background (lighting) estimate: a quadratic surface fitted to a coarse grid.
BG_GRID = 32  # longer side of the coarse grid, cells
BG_ITERATIONS = 5  # refits, each without the cells well above the last fit
BG_TOLERANCE = 0.02  # cells this close above the fit always count as background
BG_FLAT = 0.05  # a background varying less than this is taken as uniform

# A digit filling a square image was most likely resized into it: its width is
# brought to MNIST's median proportions, width 0.8 x height (training digits'
# ink boxes: 5-95% range 0.4-1.1; 1s 0.2-0.85). Only ever narrowed.
TYPICAL_ASPECT = 0.8
EDGE_SLACK = 0.1  # ink this close to an edge (of the side) reaches it

# Ink reaching an edge: the image is cleaned again inside a restored margin.
MARGIN = 0.25  # of the longer side, on every side
PAPER_SHARE = 0.05  # the paper is the level of the darkest 5% of the edges

SMOOTH_SIGMA = 1.0  # pixels; blurs noise and JPEG blocks before thresholding
OUTLIER_SIGMAS = 3.0  # values this many noise deviations above are not noise
MIN_CONTRAST = 0.1  # ink must differ from the background by this (of 0..1)
MIN_DIGIT = 0.08  # the ink must span this fraction of the image's longer side
SPECK_FRACTION = 0.05  # components smaller than this x the largest are specks
HALO = 2  # pixels around the ink whose grey edge values are kept

# Grid lines: straight runs spanning LINE_SPAN of the image, at least MIN_LINES
# of them side by side, fainter or thinner than the digit's own strokes.
LINE_RUN = 0.2  # straight pieces at least this long (of the image side) chain up
LINE_SPAN = 0.75  # MNIST-style digits span at most 20/28 = 0.71 of their frame
LINE_STRAIGHT = 0.1  # a line may wander sideways by this much of its length
MIN_LINES = 2
LINE_FAINT = 0.6  # fainter than this x the strokes' brightness
LINE_THIN = 0.6  # or thinner than this x the strokes' width

# Pen strokes thinner than THIN_STROKE x the digit's size are thickened to
# STROKE (MNIST's are 0.07-0.2 of the digit's size, median 0.12).
THIN_STROKE = 0.06
STROKE = 0.1
CROP_SHRINK = 2  # shrinking more than this, crop at the ink's half-level edge
FULL_INK = 0.95  # ink peaking below this is brightened to peak at 1, as MNIST's


@dataclass(frozen=True)
class Frame:
    """How a dataset places its digits: the box they fit and how they are centred."""

    box: int  # the digit's longer side, pixels
    centre: str  # a key of CENTRING


# MNIST fits a 20 box in 28 and centres by mass; the sklearn 8x8 digits (UCI
# optdigits) fill their frame and are centred as a box. Other sizes, such as
# 20x20 CSV datasets, keep MNIST's 20/28 ratio: a 14 box centred by mass.
FRAMES = {28: Frame(box=20, centre="mass"), 8: Frame(box=8, centre="box")}
MIN_SIZE, MAX_SIZE = 4, 64  # outputs; the cleaning runs at WORK_SIDE


def frame_for(size: int) -> Frame:
    """The box and centring for an output of `size` x `size` pixels."""
    if not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise PreprocessError(
            f"Output size {size!r} is not supported: use an integer from "
            f"{MIN_SIZE} to {MAX_SIZE}."
        )
    return FRAMES.get(int(size), Frame(box=round(size * 20 / 28), centre="mass"))


@dataclass(frozen=True)
class Preprocessed:
    """Each step of `preprocess`, as uint8 images (0 = black, 255 = white ink).

    raw : (H, W) the grayscale image as given, its longer side reduced to at most
        `WORK_SIDE`; a transparent canvas is composited first.
    cleaned : (H, W) white ink on black with lighting, grid lines and specks
        removed.
    cropped : (h, w) the ink's bounding box cut from `cleaned`.
    scaled : (bh, bw) `cropped` scaled so its longer side is the frame's box
        (narrowed first if it filled a square image: see step 5 above).
    centred : (size, size) the final image.
    inverted : True if the image was dark ink on light paper.
    """

    raw: np.ndarray
    cleaned: np.ndarray
    cropped: np.ndarray
    scaled: np.ndarray
    centred: np.ndarray
    inverted: bool

    @property
    def image(self) -> np.ndarray:
        """The model input: `centred` as float32 in 0..1, shape (size, size)."""
        return self.centred.astype(np.float32) / 255

    def steps(self) -> dict[str, np.ndarray]:
        """The images in pipeline order, keyed by step name, for display."""
        names = ("raw", "cleaned", "cropped", "scaled", "centred")
        return {name: getattr(self, name) for name in names}


ImageSource = Image.Image | np.ndarray | bytes | str | os.PathLike | BinaryIO

# ---------------------------------------------------------------- reading files

# How every NoDigitFound message begins; `preprocess` names the image in it.
_NO_DIGIT = "No digit found: "


def _the(name: str | None, *, capital: bool = False) -> str:
    """How a message names the image: "image 'seven.png'" or "the image"."""
    text = f"image {name!r}" if name else "the image"
    return text[0].upper() + text[1:] if capital else text


def _too_many_bytes(name: str | None) -> PreprocessError:
    return PreprocessError(
        f"{_the(name, capital=True)} is larger than the {MAX_BYTES // 2**20} MB limit. "
        "Save it at a smaller size and try again."
    )


def _read_path(path: str | os.PathLike, name: str | None) -> bytes:
    """At most `MAX_BYTES` + 1 bytes of a regular file (``digits.files``: a
    FIFO, a device or a folder is refused before and after opening, without
    blocking)."""
    try:
        return files.read_bounded(path, MAX_BYTES)
    except files.NotAFile as exc:
        raise PreprocessError(
            f"{_the(name, capital=True)} is {exc.kind}, not an image file. "
            "Give the path of a PNG or JPEG file."
        ) from None
    except files.TooLarge:
        raise _too_many_bytes(name) from None
    except OSError as exc:
        raise PreprocessError(
            f"Cannot read {_the(name)}: {exc.strerror or exc}. "
            "Check the path and try again."
        ) from exc
    except ValueError as exc:  # a path with a NUL byte in it
        raise PreprocessError(
            f"Cannot read {_the(name)}: the path is not valid ({exc})."
        ) from exc


def _read_bytes(
    source: bytes | bytearray | memoryview | str | os.PathLike | BinaryIO,
    name: str | None,
) -> bytes:
    """The image file's bytes, never reading more than `MAX_BYTES` + 1 of them."""
    if isinstance(source, bytes | bytearray | memoryview):
        if memoryview(source).nbytes > MAX_BYTES:
            raise _too_many_bytes(name)
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        data = _read_path(source, name)
    else:
        try:
            data = source.read(MAX_BYTES + 1)
        except OSError as exc:
            raise PreprocessError(
                f"Cannot read {_the(name)}: {exc.strerror or exc}. Try again."
            ) from exc
        if not isinstance(data, bytes | bytearray):
            raise PreprocessError(
                f"Cannot read {_the(name)}: the file object gave "
                f"{type(data).__name__}, not bytes. Open it in binary mode ('rb')."
            )
    if len(data) > MAX_BYTES:
        raise _too_many_bytes(name)
    if not data:
        raise PreprocessError(
            f"{_the(name, capital=True)} is empty (0 bytes). Choose another file."
        )
    return bytes(data)


def _check_pixels(width: int, height: int, name: str | None) -> None:
    """Refuse images over `MAX_PIXELS`, or too small to hold a digit."""
    if width * height > MAX_PIXELS:
        side = math.isqrt(MAX_PIXELS)
        raise PreprocessError(
            f"{_the(name, capital=True)} is {width} x {height} pixels; the limit is "
            f"{MAX_PIXELS / 1e6:.1f} megapixels ({side} x {side}). "
            "Shrink it and try again."
        )
    if max(width, height) < MIN_SIDE:
        raise PreprocessError(
            f"{_the(name, capital=True)} is only {width} x {height} pixels, too "
            f"small to hold a digit: use one at least {MIN_SIDE} pixels tall or wide."
        )


# How each supported format's files begin, to tell a damaged image from a
# file that never was one.
_SIGNATURES = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "BMP": (b"BM",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "WEBP": (b"RIFF",),
}


def _not_an_image(data: bytes, name: str | None) -> PreprocessError:
    """The error for bytes no format recognised, saying what they look like."""
    for fmt, signatures in _SIGNATURES.items():
        if data.startswith(signatures) and (fmt != "WEBP" or data[8:12] == b"WEBP"):
            return _corrupt(name, f"it starts as a {fmt} file but its header is cut")
    start = data[:512].lstrip().lower()
    if start.startswith(b"<"):
        hint = " (it looks like SVG, HTML or XML text: export it as PNG)"
    elif start.startswith(b"%pdf"):
        hint = " (it is a PDF document: export the page as PNG)"
    elif data[:4] in (b"II*\0", b"MM\0*"):
        hint = " (it is a TIFF image, which is not supported)"
    else:
        hint = ""
    return PreprocessError(
        f"Cannot read {_the(name)}: it is not a {', '.join(FORMATS[:-1])} or "
        f"{FORMATS[-1]} image{hint}. Save it as PNG or JPEG and try again."
    )


# What Pillow raises on a truncated or corrupt file, depending on the format.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def _open(
    source: bytes | str | os.PathLike | BinaryIO, name: str | None
) -> tuple[Image.Image, str | None]:
    """Open without decoding: check the format and the size from the header."""
    if name is None and isinstance(source, str | os.PathLike):
        name = os.fsdecode(source)
    if name is None:
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else None
    data = _read_bytes(source, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # A damaged EXIF block: Pillow's warning would print on stderr.
            warnings.simplefilter("ignore", UserWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow read huge dimensions from the header and stopped there.
        raise PreprocessError(
            f"{_the(name, capital=True)} is too large to decode safely: its header "
            f"declares more than {MAX_PIXELS / 1e6:.1f} megapixels. Shrink it and "
            "try again."
        ) from exc
    except UnidentifiedImageError as exc:  # no format's header matched
        raise _not_an_image(data, name) from exc
    except _DECODE_ERRORS as exc:  # a header that matched, then broke off
        raise _corrupt(name, exc) from exc
    _check_pixels(*image.size, name)
    return image, name


def _corrupt(name: str | None, exc: BaseException | str) -> PreprocessError:
    return PreprocessError(
        f"Cannot read {_the(name)}: the file is corrupt or truncated ({exc}). "
        "Save it again or choose another file."
    )


def _decode(image: Image.Image, name: str | None) -> Image.Image:
    """Decode the pixels (the first frame of an animation), turning truncated
    or corrupt data into a clear error."""
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise _corrupt(name, exc) from exc
    try:
        # Phones store photos sideways plus an EXIF note saying which way is up.
        with warnings.catch_warnings():
            # A damaged EXIF block, again: the pixels are fine.
            warnings.simplefilter("ignore", UserWarning)
            ImageOps.exif_transpose(image, in_place=True)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        pass  # a damaged EXIF block: the pixels are fine, shown as stored
    return image


def load_image(
    source: bytes | str | os.PathLike | BinaryIO, *, name: str | None = None
) -> Image.Image:
    """Read a PNG, JPEG, BMP, GIF or WebP file into a decoded Pillow image.

    `source` is a path, the file's bytes or a binary file object (a Streamlit
    upload); `name` names it in error messages (default: the path or the
    object's ``name``). Only regular files are read, and never more than
    `MAX_BYTES` + 1 bytes of them. Raises `PreprocessError` naming the file if
    it is missing, not a regular file, empty, not an image, corrupt, truncated
    or over the size limits.
    """
    image, name = _open(source, name)
    return _decode(image, name)


# ---------------------------------------------------------------- to grayscale


def _array_problem(array: np.ndarray) -> str | None:
    """Why an image array cannot be read as pixel values, or None if it can."""
    kind = array.dtype.kind
    if kind not in "biuf":
        return f"has dtype {array.dtype}"
    if kind == "f" and not np.isfinite(array).all():
        return "holds NaN or infinite values"
    if array.min() < 0:
        return f"holds negative values (down to {array.min():g})"
    top = array.max()
    if kind == "f" and top > 255:
        return f"holds floats up to {top:g}; floats must be 0..1 (or 0..255)"
    if kind in "iu" and top > 65535:
        return f"holds integers up to {top}; integers must be 0..255 (or 16-bit)"
    return None


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an array to uint8: floats are 0..1 (or 0..255 if larger), ints 0..255
    (or 16-bit if larger), booleans 0/1."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    problem = _array_problem(array)
    if problem:
        raise PreprocessError(
            f"Image array of shape {array.shape} {problem}. Pass pixel values: "
            "uint8 0..255, float 0..1 or bool."
        )
    values = array.astype(np.float64)
    top = values.max()
    if array.dtype.kind == "f":
        scale = 255.0 if top <= 1.0 else 1.0
    else:
        scale = 1.0 if top <= 255 else 255.0 / 65535.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _array_to_image(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise PreprocessError(
            f"Image array has shape {array.shape}; expected (H, W), (H, W, 3) "
            "or (H, W, 4)."
        )
    if min(array.shape[:2]) < 1:
        raise PreprocessError(
            f"Image array of shape {array.shape} has no pixels. Draw a digit first."
        )
    _check_pixels(array.shape[1], array.shape[0], None)
    return Image.fromarray(_as_uint8(array))


def _deep_to_gray(image: Image.Image, name: str | None) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit ("L").

    16-bit modes span 0..65535. Other modes carry no range, so it is the
    smallest of 0..1 (floats only), 0..255, 0..65535 and 0..2^31-1 holding the
    brightest pixel; a float image brighter than 65535 is scaled by its maximum.
    """
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise PreprocessError(
            f"Cannot read {_the(name)}: it holds NaN or infinite pixel values. "
            "Save it as an 8-bit image and try again."
        )
    top = float(values.max(initial=0.0))
    if image.mode.startswith("I;16"):
        full = 65535.0
    else:
        ranges = [255.0, 65535.0] + ([1.0] if image.mode == "F" else [2.0**31 - 1])
        full = min((r for r in ranges if top <= r), default=top)
    gray = np.clip(np.rint(values * (255 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray)


def _composite(image: Image.Image) -> Image.Image:
    """RGBA to grayscale over the background the strokes contrast with.

    A transparent canvas has untouched pixels (0, 0, 0, 0); its strokes may be
    light or dark, so they go over black if light and over white if dark.
    """
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255
    if alpha.min() == 1.0:
        return rgba.convert("L")
    if alpha.max() == 0.0:
        raise NoDigitFound(
            _NO_DIGIT + "the image is blank (fully transparent). "
            "Draw a digit or upload a photo of one."
        )
    gray = np.asarray(rgba.convert("L"), dtype=np.float64) / 255
    stroke = float((alpha * gray).sum() / alpha.sum())
    background = (0, 0, 0, 255) if stroke >= 0.5 else (255, 255, 255, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba)


def _grayscale(source: ImageSource, name: str | None) -> Image.Image:
    """Any supported source as a grayscale ("L") Pillow image of at most
    `WORK_SIDE` pixels on its longer side."""
    if isinstance(source, Image.Image):
        _check_pixels(*source.size, name)
        image = source
    elif isinstance(source, np.ndarray):
        image = _array_to_image(source)
    else:
        image, name = _open(source, name)
        if image.format == "JPEG":
            # Let the JPEG decoder scale down by up to 8x: much faster than
            # decoding a 12-megapixel photo and shrinking it afterwards.
            image.draft(image.mode, (WORK_SIDE, WORK_SIDE))
        image = _decode(image, name)
    if image.mode.startswith(("I", "F")):
        image = _deep_to_gray(image, name)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    try:
        gray = _composite(image) if has_alpha else image.convert("L")
    except ValueError as exc:  # a colour space Pillow cannot convert, such as LAB
        raise PreprocessError(
            f"Cannot read {_the(name)}: its colour mode {image.mode} is not "
            "supported. Save it as RGB or grayscale and try again."
        ) from exc
    if max(gray.size) > WORK_SIDE:
        factor = WORK_SIDE / max(gray.size)
        size = tuple(max(1, round(side * factor)) for side in gray.size)
        gray = gray.resize(size, Image.Resampling.BOX)
    return gray.convert("L")


# ---------------------------------------------------------------- cleaning


def _is_dark_ink(gray: np.ndarray) -> bool:
    """True if the ink is darker than the background.

    gray : (H, W) float in 0..1. The background is the median of the border;
    the ink is whichever extreme lies farther from it.
    """
    width = max(1, round(0.02 * min(gray.shape)))
    border = np.concatenate(
        [
            gray[:width].ravel(),
            gray[-width:].ravel(),
            gray[:, :width].ravel(),
            gray[:, -width:].ravel(),
        ]
    )
    background = float(np.median(border))
    low, high = np.percentile(gray, [0.2, 99.8])
    return background - low > high - background


def _background(ink: np.ndarray) -> np.ndarray | float:
    """The background level under white ink: a float if uniform, else (H, W).

    A quadratic surface fitted to a coarse grid of the image, refitted a few
    times without the cells lying well above it (the ink), follows shadows,
    gradients and vignetting but never the digit, however much of the image
    the digit fills (a large median or opening filter would eat bold strokes).
    """
    image = Image.fromarray(ink.astype(np.float32), mode="F")
    factor = BG_GRID / max(image.size)
    if factor < 1:
        grid_size = tuple(max(1, round(side * factor)) for side in image.size)
        image = image.resize(grid_size, Image.Resampling.BOX)
    values = np.asarray(image, dtype=np.float64).ravel()
    terms = _quadratic_terms(*image.size[::-1])
    # Start from the darker half: ink covers less than half of any image, and a
    # quadratic fitted to part of a quadratic is that quadratic.
    keep = values <= np.median(values)
    for _ in range(BG_ITERATIONS):
        coef = np.linalg.lstsq(terms[keep], values[keep], rcond=None)[0]
        residual = values - terms @ coef
        spread = _robust_spread(residual[keep])
        keep = residual <= max(BG_TOLERANCE, OUTLIER_SIGMAS * spread)
    y, x = _centres(*ink.shape)
    c = coef.astype(np.float32)
    surface = c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y
    if np.ptp(surface) < BG_FLAT:
        return float(np.median(values[keep]))
    return surface


def _centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in -1..1: y of shape (height, 1), x of shape (1, width)."""
    y = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height * 2 - 1
    x = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width * 2 - 1
    return y, x


def _quadratic_terms(height: int, width: int) -> np.ndarray:
    """(height * width, 6): 1, x, y, x^2, xy, y^2 at the pixel centres."""
    y, x = (
        np.broadcast_to(a, (height, width)).ravel() for a in _centres(height, width)
    )
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _robust_spread(values: np.ndarray) -> float:
    """The standard deviation of Gaussian noise, estimated from the median
    absolute deviation, which outliers (ink) barely move."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold: the cut maximising the between-class variance."""
    top = float(values.max())
    counts = np.bincount((values * (255 / top)).astype(np.uint8).ravel(), minlength=256)
    edges = np.linspace(0, top, 257)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = sum0 / weight0
        mean1 = (sum0[-1] - sum0) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[np.nanargmax(between[:-1]) + 1])


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a non-empty boolean mask, pixels.

    Across a stroke w pixels wide the distance to the background runs 1, 2, ...
    up to about w/2 and back, averaging (w + 2) / 4.
    """
    sample = np.pad(mask[_bounds(mask)], 1)
    mean = float(ndimage.distance_transform_edt(sample)[sample].mean())
    return max(1.0, 4 * mean - 2)


def _grid_lines(smooth: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels of ruled or squared-paper lines, to be left out of the ink.

    smooth : (H, W) the smoothed ink image. A grey opening with a line
    `LINE_RUN` of the image long keeps straight runs (short enough to follow a
    slightly tilted line); connected runs that span `LINE_SPAN` of the image
    and stay within `LINE_STRAIGHT` of it sideways are lines. They count as grid
    only if at least `MIN_LINES` run side by side and each is fainter or
    thinner than the digit's own strokes, so a canvas digit's long strokes, as
    bright and wide as the rest of it, stay.
    Returns a boolean (H, W) mask covering each line's width.
    """
    pieces: list[tuple[int, tuple[slice, slice], np.ndarray]] = []
    for axis in (0, 1):
        size = [1, 1]
        size[axis] = max(3, int(LINE_RUN * smooth.shape[axis]))
        opened = ndimage.grey_opening(smooth, size=tuple(size))
        labels, _ = ndimage.label(opened > threshold / 4)
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            span = found[axis].stop - found[axis].start
            across = found[1 - axis].stop - found[1 - axis].start
            if (
                span >= LINE_SPAN * smooth.shape[axis]
                and across <= LINE_STRAIGHT * span
            ):
                pieces.append((axis, found, labels[found] == index))
    grid = np.zeros(smooth.shape, dtype=bool)
    if not pieces:
        return grid
    lines = grid.copy()
    for _, found, component in pieces:
        lines[found] |= component
    ink = (smooth > threshold) & ~_dilate(lines, 2)
    # With no ink beside the lines (blank squared paper) every line is grid.
    level = np.percentile(smooth[ink], 90) if ink.any() else np.inf
    width = _stroke_width(ink) if ink.any() else np.inf
    # Where a line crosses or runs along a stroke, the stroke stays: a faint
    # line gives way to bright ink, a thin one to bright ink thicker than it.
    bright = _dilate(smooth >= LINE_FAINT * level, 1)
    counts = [0, 0]
    for axis, found, component in pieces:
        thickness = component.sum() / component.shape[axis]
        if np.median(smooth[found][component]) < LINE_FAINT * level:
            keep = bright[found]
        elif thickness < LINE_THIN * width:
            reach = max(1, math.ceil(thickness / 2))
            strokes = ndimage.binary_opening(
                smooth[found] > threshold, iterations=reach
            )
            keep = bright[found] & strokes
        else:
            continue
        grid[found] |= _dilate(component, 1) & ~keep
        counts[axis] += 1
    if max(counts) < MIN_LINES:
        return np.zeros_like(grid)
    return grid


def _dilate(mask: np.ndarray, reach: int) -> np.ndarray:
    """Grow a boolean mask by `reach` pixels (a square neighbourhood)."""
    return ndimage.maximum_filter(mask, size=2 * reach + 1)


def _bounds(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """The bounding box of a non-empty mask, widened by `margin` pixels."""
    rows, cols = np.nonzero(mask)
    return (
        slice(max(rows.min() - margin, 0), rows.max() + 1 + margin),
        slice(max(cols.min() - margin, 0), cols.max() + 1 + margin),
    )


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    """Keep the 8-connected components at least `SPECK_FRACTION` of the largest.

    Raises NoDigitFound if nothing digit-sized is left.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        raise NoDigitFound(
            _NO_DIGIT + "the image holds only faint lines or noise. "
            "Draw a digit or upload a photo of one."
        )
    areas = np.bincount(labels.ravel())[1:]
    mask = np.isin(labels, np.flatnonzero(areas >= SPECK_FRACTION * areas.max()) + 1)
    rows, cols = _bounds(mask)
    extent = max(rows.stop - rows.start, cols.stop - cols.start)
    if extent < max(2, MIN_DIGIT * max(mask.shape)):
        raise NoDigitFound(
            _NO_DIGIT + "the marks in the image are too small to be a digit. "
            "Draw a larger digit, or crop the photo closer to it."
        )
    return mask


def _thicken(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Widen pen strokes much thinner than MNIST's, with a grey dilation.

    ink : (H, W) float; mask : (H, W) bool, the digit. A pen on paper draws
    strokes a few percent of the digit's height; scaled to 20 pixels they would
    fade to a hairline the models never saw. MNIST's strokes are about
    0.07-0.2 of the digit's height (median 0.12).
    """
    found = _bounds(mask)
    size = max(found[0].stop - found[0].start, found[1].stop - found[1].start)
    # Measure the strokes where the ink is at least half its level: the mask
    # comes from the smoothed image, which widens a hairline.
    core = mask & (ink >= np.percentile(ink[mask], 90) / 2)
    width = _stroke_width(core if core.any() else mask)
    if width >= THIN_STROKE * size:
        return ink
    radius = (STROKE * size - width) / 2
    reach = math.ceil(radius)
    y, x = np.ogrid[-reach : reach + 1, -reach : reach + 1]
    found = _bounds(mask, margin=2 * reach + HALO)
    ink = ink.copy()
    ink[found] = ndimage.grey_dilation(ink[found], footprint=x**2 + y**2 <= radius**2)
    return ink


def _clean(
    gray: np.ndarray, background: np.ndarray | float | None = None
) -> np.ndarray:
    """White ink on a black background, everything else removed.

    gray : (H, W) float32 in 0..1, white ink; background : its `_background`,
    if already fitted. Returns (H, W) float in 0..1.
    Raises NoDigitFound if there is no ink.
    """
    if background is None:
        background = _background(gray)
    ink = np.clip(gray - background, 0, None)
    smooth = ndimage.gaussian_filter(ink, SMOOTH_SIGMA)
    if smooth.max() < MIN_CONTRAST:
        raise NoDigitFound(
            _NO_DIGIT + "the image is blank. Draw a digit or upload a photo of one."
        )
    threshold = max(_otsu(smooth), MIN_CONTRAST / 2)
    grid = _grid_lines(smooth, threshold)
    mask = _drop_specks((smooth > threshold) & ~grid)

    # Keep the grey anti-aliased edges: fainter ink near the strokes and
    # connected to them (hysteresis), and a thin halo; not the grid lines.
    near = _dilate(mask, 2 * HALO)
    faint, _ = ndimage.label((ink > threshold / 2) & near & ~grid, np.ones((3, 3)))
    keep = _dilate(mask, HALO) & ~(grid & ~mask)
    keep |= np.isin(faint, np.unique(faint[mask])) & (faint > 0)

    # Subtract the noise floor, measured away from the ink.
    outside = ink[~near]
    if outside.size:
        noise = np.median(outside) + OUTLIER_SIGMAS * _robust_spread(outside)
        ink = np.clip(ink - noise, 0, None)
    ink = np.where(keep, ink, 0)
    level = np.percentile(ink[mask], 99)
    if 0 < level < FULL_INK:
        ink = ink / level
    return np.clip(_thicken(ink, mask), 0, 1)


def _fit_followed_the_ink(gray: np.ndarray, background: np.ndarray | float) -> bool:
    """True if the lighting fit rose over halfway from the paper to the ink.

    gray : (H, W) float, white ink; background : its `_background`. A bold
    digit cropped tight can fill so much of its image that the fit takes the
    middle of its strokes for background and `_clean` wipes it out, and what is
    left may no longer reach the edges.
    Shadows, gradients and squared paper stay well below the ink; only the
    digit itself brings the fit that close to it.
    """
    paper, peak = np.percentile(gray, [5, 99.5])
    return float(np.max(background)) > (paper + peak) / 2


def _clean_to_the_edges(gray: np.ndarray) -> np.ndarray:
    """`_clean`, on a margin of paper restored if the ink reaches an edge.

    gray : (H, W) float32 in 0..1, white ink. Returns (H, W) float in 0..1.
    The lighting fit, the noise floor and the threshold all measure the
    background around the digit; a digit cropped tight to its ink, or
    stretched to fill its image, leaves too little of it (a narrow 1 may be
    nearly all ink). If the cleaned ink touches an edge, or the lighting fit
    rose toward the ink (`_fit_followed_the_ink`), the image is cleaned again
    inside a margin of `MARGIN` x its longer side, at the level of the
    darkest `PAPER_SHARE` of its edge pixels (the paper, where any shows), and
    the margin cut off again.
    """
    background = _background(gray)
    cleaned = _clean(gray, background)
    edges = (cleaned[0], cleaned[-1], cleaned[:, 0], cleaned[:, -1])
    if not any(edge.any() for edge in edges) and not _fit_followed_the_ink(
        gray, background
    ):
        return cleaned
    rim = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    paper = float(np.percentile(rim, 100 * PAPER_SHARE))
    pad = math.ceil(MARGIN * max(gray.shape))
    padded = np.pad(gray, pad, constant_values=paper)
    return _clean(padded)[pad:-pad, pad:-pad]


# ---------------------------------------------------------------- geometry


def _core(cropped: np.ndarray, box: int) -> tuple[int, int, int, int]:
    """The part of the ink that maps onto the box: (top, bottom, left, right).

    At the output's own scale every non-zero pixel counts, as MNIST's grey edge
    pixels lie inside its 20-pixel box. An image shrunk by more than
    `CROP_SHRINK` has edges blurred over several pixels (camera, JPEG, canvas
    anti-aliasing); there the edge is where the ink reaches half its level, as
    MNIST fitted its box to the bilevel NIST scans.
    """
    if max(cropped.shape) <= CROP_SHRINK * box:
        return 0, cropped.shape[0], 0, cropped.shape[1]
    level = np.percentile(cropped[cropped > 0], 99) / 2
    rows, cols = np.nonzero(cropped >= level)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def _scale(cropped: np.ndarray, box: int) -> np.ndarray:
    """Scale the ink so its longer side is `box` pixels, with anti-aliasing.

    cropped : (h, w) float in 0..1. Returns (bh, bw) float with max(bh, bw) ==
    box. The ink is centred in the box before it is cut into whole pixels, so
    the shorter side keeps partly covered grey edge pixels, as MNIST's does (a
    crop to whole pixels would make digits about half a pixel too narrow).
    An image already at scale is returned as it is.
    """
    core = _core(cropped, box)
    factor = box / max(core[1] - core[0], core[3] - core[2])
    if factor == 1 and core == (0, cropped.shape[0], 0, cropped.shape[1]):
        return cropped
    # Per axis: where the core lands in the box, widened to whole pixels, and
    # the source region that maps onto those pixels.
    size, region = [], []
    for start, stop in (core[:2], core[2:]):
        low = (box - (stop - start) * factor) / 2
        high = box - low
        first, last = math.floor(low + 1e-6), math.ceil(high - 1e-6)
        size.append(last - first)
        region.append((start - (low - first) / factor, stop + (last - high) / factor))
    # The region may reach past the crop: pad it with black.
    pad = math.ceil(1 / factor) + 1
    (y0, y1), (x0, x1) = region
    padded = Image.fromarray(np.pad(cropped.astype(np.float32), pad), mode="F")
    scaled = padded.resize(
        (size[1], size[0]),
        Image.Resampling.LANCZOS,
        box=(x0 + pad, y0 + pad, x1 + pad, y1 + pad),
    )
    return np.clip(np.asarray(scaled), 0, 1)


def _fills_a_square(cleaned: np.ndarray) -> bool:
    """True if the ink reaches all four edges of a square image: most likely a
    digit resized to fill it (``resize((28, 28))``), its proportions lost.

    "Reaches" allows `EDGE_SLACK` of the side: the cleaning may take off the
    faintest edge pixels that the resizing spread.
    """
    height, width = cleaned.shape
    if abs(height - width) > 1:
        return False
    slack = max(1, round(EDGE_SLACK * height))
    rows, cols = np.nonzero(cleaned)
    gaps = (rows.min(), height - 1 - rows.max(), cols.min(), width - 1 - cols.max())
    return max(gaps) < slack


def _narrowed(ink: np.ndarray, aspect: float) -> np.ndarray:
    """Ink (h, w) wider than `aspect` x its height, resized to that width
    (Lanczos); narrower ink is returned as it is."""
    height, width = ink.shape
    target = max(1, round(aspect * height))
    if width <= target:
        return ink
    image = Image.fromarray(ink.astype(np.float32), mode="F")
    return np.clip(np.asarray(image.resize((target, height), Image.LANCZOS)), 0, 1)


def _mass_offset(scaled: np.ndarray, size: int) -> np.ndarray:
    """Whole-pixel offset putting the centre of mass within half a pixel of
    (size/2, size/2), as in MNIST: no resampling blurs the digit."""
    centre = np.array(ndimage.center_of_mass(scaled.astype(np.float64)))
    return np.floor(size / 2 - centre + 0.5)


def _box_offset(scaled: np.ndarray, size: int) -> np.ndarray:
    """Offset centring the bounding box."""
    return (size - np.array(scaled.shape)) // 2


# How a frame centres its digit: Frame.centre names one of these.
CENTRING = {"mass": _mass_offset, "box": _box_offset}


def _place(scaled: np.ndarray, size: int, centre: str) -> np.ndarray:
    """Paste (bh, bw) uint8 into a (size, size) frame, centred by `centre`.

    The offset is clamped so the ink never leaves the frame; for realistic
    digits in MNIST's 20-in-28 frame the clamp never acts.
    """
    shape = np.array(scaled.shape)
    offset = np.clip(CENTRING[centre](scaled, size), 0, size - shape).astype(int)
    frame = np.zeros((size, size), dtype=np.uint8)
    frame[offset[0] : offset[0] + shape[0], offset[1] : offset[1] + shape[1]] = scaled
    return frame


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def preprocess(
    image: ImageSource, size: int = 28, *, name: str | None = None
) -> Preprocessed:
    """Turn a user's image into a (size, size) model input, MNIST-style.

    image : a Pillow image; an array (H, W), (H, W, 3) or (H, W, 4) - uint8
        0..255, float 0..1 or bool - such as a streamlit-drawable-canvas RGBA
        array (integers up to 65535 are read as 16-bit); or a PNG, JPEG, BMP,
        GIF or WebP file as bytes, a path (a regular file) or a binary file
        object.
    size : output side: 28 for MNIST (digit fits 20x20, centred by mass), 8 for
        the sklearn digits (fills the frame, centred by box); other sizes keep
        MNIST's 20/28 box ratio (see `FRAMES`).
    name : names the image in error messages.

    Raises `NoDigitFound` for a blank image and `PreprocessError` for files that
    are unreadable, not regular files or over the limits, and for arrays of the
    wrong shape, dtype or range (NaN, negative).
    """
    try:
        return _preprocess(image, size, name)
    except NoDigitFound as exc:
        if not name:
            raise
        # Say which image: `digits predict` may be given several.
        reason = str(exc).removeprefix(_NO_DIGIT)
        raise NoDigitFound(f"No digit found in {_the(name)}: {reason}") from exc


def _preprocess(image: ImageSource, size: int, name: str | None) -> Preprocessed:
    frame = frame_for(size)
    gray = _grayscale(image, name)
    raw = np.asarray(gray)
    values = raw.astype(np.float32) / 255
    inverted = _is_dark_ink(values)
    if inverted:
        values = 1 - values
    cleaned = _to_uint8(_clean_to_the_edges(values))
    if not cleaned.any():
        raise NoDigitFound(
            _NO_DIGIT + "the image is blank. Draw a digit or upload a photo of one."
        )
    rows, cols = np.nonzero(cleaned)
    cropped = cleaned[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    ink = cropped / 255
    if frame.centre == "mass" and _fills_a_square(cleaned):
        ink = _narrowed(ink, TYPICAL_ASPECT)
    scaled = _to_uint8(_scale(ink, frame.box))
    if not scaled.any():
        raise NoDigitFound(
            _NO_DIGIT + "the ink is too faint. Draw a digit or upload a photo of one."
        )
    centred = _place(scaled, size, frame.centre)
    return Preprocessed(raw, cleaned, cropped, scaled, centred, inverted)
