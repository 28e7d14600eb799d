"""Preprocessing: any user image becomes an MNIST-style input.

The invariants come from how MNIST was made: the ink fits a 20x20 box and its
centre of mass lies within half a pixel of (14, 14). Real MNIST test digits are
the ground truth: they must pass through unchanged, and come back close to
themselves after being enlarged, moved, inverted, made into a transparent
canvas, saved as PNG or JPEG, photographed on squared paper, or cropped tight
to their ink with no margin.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from scipy import ndimage

from digits.data import Dataset, load_dataset
from digits.errors import NoDigitFound, PreprocessError
from digits.preprocess import (
    MAX_BYTES,
    TYPICAL_ASPECT,
    WORK_SIDE,
    Preprocessed,
    frame_for,
    load_image,
    preprocess,
)

# ---------------------------------------------------------------- helpers


def render(digit: np.ndarray, canvas: int = 280, box: int = 200, shift=(0, 0)):
    """An MNIST digit drawn large: its 20-pixel box becomes `box` pixels.

    Returns (canvas, canvas) uint8, white ink on black, moved by `shift`.
    """
    side = round(28 * box / 20)
    big = np.asarray(
        Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    )
    frame = np.zeros((canvas + 2 * side, canvas + 2 * side), np.uint8)
    top = side + (canvas - side) // 2 + shift[0]
    left = side + (canvas - side) // 2 + shift[1]
    frame[top : top + side, left : left + side] = big
    return frame[side:-side, side:-side]


def transparent_canvas(ink: np.ndarray, colour: int) -> np.ndarray:
    """What streamlit-drawable-canvas returns: (H, W, 4) RGBA, untouched pixels
    (0, 0, 0, 0), strokes of one colour with their coverage in alpha."""
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., :3] = np.where(ink[..., None] > 0, colour, 0)
    rgba[..., 3] = ink
    return rgba


def encode(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(digit: np.ndarray, rng: np.random.Generator, grid: bool = True) -> bytes:
    """A JPEG 'photo': the digit in dark ink on squared paper under a shadow.

    With grid=False the same shadowed paper, without grid lines or noise.
    """
    height, width = 600, 800
    ink = np.zeros((height, width))
    ink[:, 100:700] = render(digit, canvas=600, box=300) / 255
    y, x = np.mgrid[0:height, 0:width]
    paper = 200 + 40 * x / width - 60 * y / height
    if grid:
        paper = paper - 70 * ((y % 40 < 2) | (x % 40 < 2))
        paper = paper + rng.normal(0, 6, paper.shape)
    gray = paper * (1 - ink) + 30 * ink
    rgb = np.stack([gray, gray * 0.97, gray * 0.9], axis=-1)
    return encode(np.clip(rgb, 0, 255).astype(np.uint8), "JPEG", quality=80)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def shift_tolerant_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over one-pixel shifts: MNIST's centring rounds the
    centre of mass to whole pixels, so a digit redrawn slightly differently
    may land one pixel over."""
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return max(correlation(np.roll(a, s, axis=(0, 1)), b) for s in shifts)


def assert_mnist_frame(result: Preprocessed, size: int = 28, box: int = 20) -> None:
    """The invariants of an MNIST image, checked on the final output."""
    out = result.centred
    assert out.shape == (size, size) and out.dtype == np.uint8
    assert result.image.dtype == np.float32
    assert 0 <= result.image.min() and result.image.max() <= 1
    rows, cols = np.nonzero(out)
    assert rows.max() - rows.min() + 1 <= box
    assert cols.max() - cols.min() + 1 <= box
    assert max(np.ptp(rows), np.ptp(cols)) + 1 >= box - 1  # and fills it
    centre = np.array(ndimage.center_of_mass(out.astype(float)))
    assert np.all(np.abs(centre - size / 2) <= 0.5), centre


@pytest.fixture(scope="module")
def digits(mnist: Dataset) -> np.ndarray:
    """The first 300 MNIST test digits, (300, 28, 28) uint8."""
    return mnist.x_test[:300]


# ---------------------------------------------------------------- MNIST itself


def test_mnist_digits_pass_through_unchanged(digits):
    """MNIST is already cleaned, boxed and centred: nearly all digits come back
    identical; the rest differ by a stray pixel or a half-pixel rounding of the
    centre of mass (about 2.5% of the 10k test set)."""
    outputs = [preprocess(digit).centred for digit in digits]
    identical = [
        np.array_equal(out, digit) for out, digit in zip(outputs, digits, strict=True)
    ]
    assert np.mean(identical) >= 0.97
    for out, digit in zip(outputs, digits, strict=True):
        assert shift_tolerant_correlation(out, digit) > 0.95


def test_output_keeps_the_mnist_invariants(digits):
    sources = [
        digits[0],
        render(digits[1], box=120, shift=(-60, 50)),
        255 - render(digits[2], box=90, shift=(70, -80)),
        transparent_canvas(render(digits[3]), colour=255),
        transparent_canvas(render(digits[4], box=150), colour=0),
        photo(digits[5], np.random.default_rng(0)),
    ]
    for source in sources:
        assert_mnist_frame(preprocess(source))


# derandomize: CI runs the same 30 examples every time, so a pass is repeatable.
@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    index=st.integers(0, 299),
    # From 2x MNIST's size up. Smaller JPEG renderings keep the CNN's prediction
    # but not the pixels: see test_small_jpeg_digits_keep_the_cnns_prediction.
    box=st.integers(56, 250),
    shift=st.tuples(st.floats(-1, 1), st.floats(-1, 1)),
    style=st.sampled_from(["white", "black", "canvas-white", "canvas-black"]),
    fmt=st.sampled_from(["array", "PNG", "JPEG"]),
    quality=st.integers(70, 95),
)
def test_transformed_digits_come_back_close(
    digits, index, box, shift, style, fmt, quality
):
    digit = digits[index]
    room = (280 - box) // 2 - 4  # keep the digit inside the canvas
    ink = render(digit, box=box, shift=(round(shift[0] * room), round(shift[1] * room)))
    styles: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "white": lambda a: a,
        "black": lambda a: 255 - a,
        "canvas-white": lambda a: transparent_canvas(a, 255),
        "canvas-black": lambda a: transparent_canvas(a, 0),
    }
    image = styles[style](ink)
    if fmt == "JPEG" and image.ndim == 3:
        fmt = "PNG"  # JPEG has no alpha
    source = image if fmt == "array" else encode(image, fmt, quality)
    result = preprocess(source)
    assert_mnist_frame(result)
    assert shift_tolerant_correlation(result.centred, digit) > 0.8


def test_small_jpeg_digits_keep_the_cnns_prediction(digits):
    # A digit only 40-48 px tall in a 280 px JPEG (quality 70) loses stroke detail:
    # 20-30% come back below 0.8 pixel correlation with the original (measured on
    # 100 digits). What matters for the user still holds: the default CNN reads
    # every one of them as it reads the original.
    from digits.store import load_model

    cnn = load_model("default-cnn")
    for box in (40, 48):
        small = [
            preprocess(encode(render(d, box=box), "JPEG", 70)).image
            for d in digits[:100]
        ]
        before = cnn.predict(digits[:100])
        assert (cnn.predict(np.stack(small)) == before).all()


# ---------------------------------------------------------------- canvases


def test_canvas_strokes_of_either_colour_give_white_on_black(digits):
    ink = render(digits[7])
    white = preprocess(transparent_canvas(ink, colour=255))
    black = preprocess(transparent_canvas(ink, colour=0))
    for result in (white, black):
        assert result.centred[0].max() == 0 and result.centred[:, 0].max() == 0
        assert result.centred.max() == 255
        assert shift_tolerant_correlation(result.centred, digits[7]) > 0.9
    # The same up to rounding: one is composited over black, one over white.
    assert np.abs(white.centred.astype(int) - black.centred).max() <= 4
    assert not white.inverted and black.inverted


def test_canvas_with_opaque_background_works_too(digits):
    ink = render(digits[8])
    opaque = np.dstack([ink, ink, ink, np.full_like(ink, 255)])
    assert np.array_equal(preprocess(opaque).centred, preprocess(ink).centred)


def blank_squared_paper() -> np.ndarray:
    y, x = np.mgrid[0:300, 0:400]
    return np.where((y % 40 < 2) | (x % 40 < 2), 130, 200).astype(np.uint8)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.full((280, 280), 255, np.uint8), id="white"),
        pytest.param(np.zeros((280, 280), np.uint8), id="black"),
        pytest.param(np.full((100, 120), 128, np.uint8), id="uniform-grey"),
        pytest.param(np.zeros((280, 280, 4), np.uint8), id="transparent-canvas"),
        pytest.param(
            (200 - 60 * np.mgrid[0:300, 0:400][0] / 300).astype(np.uint8),
            id="blank-paper-in-shadow",
        ),
        pytest.param(blank_squared_paper(), id="blank-squared-paper"),
    ],
)
def test_blank_images_say_no_digit_found(image):
    with pytest.raises(NoDigitFound, match="No digit found"):
        preprocess(image)


def test_blank_message_tells_the_user_what_to_do():
    with pytest.raises(NoDigitFound) as caught:
        preprocess(np.full((280, 280), 255, np.uint8))
    assert "blank" in str(caught.value) and "Draw a digit" in str(caught.value)


# ---------------------------------------------------------------- photos


@pytest.mark.parametrize("index", [0, 1, 2])
def test_photo_on_squared_paper_comes_out_clean(digits, index):
    rng = np.random.default_rng(index)
    noisy = preprocess(photo(digits[index], rng))
    clean = preprocess(photo(digits[index], rng, grid=False))
    assert noisy.inverted
    assert shift_tolerant_correlation(noisy.centred, clean.centred) > 0.9
    # The grid lines are gone: no ink away from the digit.
    digit_area = ndimage.binary_dilation(clean.cleaned > 0, iterations=3)
    stray = noisy.cleaned[~digit_area].sum() / noisy.cleaned.sum()
    assert stray < 0.01


def test_thin_pen_strokes_get_mnist_weight():
    """A hairline 7 on a large page would shrink to a faint trace."""
    page = Image.new("L", (1000, 1000), 255)
    draw = ImageDraw.Draw(page)
    draw.line([(300, 200), (700, 200), (450, 850)], fill=0, width=4)
    draw.line([(380, 520), (620, 520)], fill=0, width=4)
    result = preprocess(page)
    assert_mnist_frame(result)
    ink_mass = result.centred.sum() / 255  # MNIST: 1% of digits below 38
    assert ink_mass > 38
    assert result.centred.max() == 255


def test_exif_rotation_is_applied(digits):
    """Phones save photos sideways with an EXIF note saying which way is up."""
    sideways = np.rot90(255 - render(digits[9]))  # stored turned left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(sideways)).save(buffer, "JPEG", exif=exif)
    result = preprocess(buffer.getvalue())
    assert shift_tolerant_correlation(result.centred, digits[9]) > 0.9


# ---------------------------------------------------------------- inputs


def test_every_input_form_gives_the_same_result(digits, tmp_path):
    ink = render(digits[10])
    path = tmp_path / "digit.png"
    path.write_bytes(encode(ink, "PNG"))
    forms = [
        ink,
        ink.astype(np.float32) / 255,
        Image.fromarray(ink),
        path.read_bytes(),
        path,
        str(path),
        io.BytesIO(path.read_bytes()),
    ]
    expected = preprocess(ink).centred
    for form in forms:
        assert np.array_equal(preprocess(form).centred, expected)


def test_load_image_decodes_png_and_jpeg(tmp_path, digits):
    for fmt, suffix in [("PNG", "png"), ("JPEG", "jpg")]:
        path = tmp_path / f"digit.{suffix}"
        path.write_bytes(encode(digits[0], fmt))
        image = load_image(path)
        assert image.size == (28, 28) and image.format == fmt


def valid_png() -> bytes:
    return encode(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8), "PNG")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not an image", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(valid_png()[:300], id="truncated-png"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, id="corrupt-png"),
        pytest.param(encode(np.zeros((64, 64), np.uint8), "JPEG")[:200], id="jpeg"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "my-digit.png"
    path.write_bytes(content)
    for read in (preprocess, load_image):
        with pytest.raises(PreprocessError, match=r"my-digit\.png"):
            read(path)
    with pytest.raises(PreprocessError, match=r"upload\.png"):
        preprocess(content, name="upload.png")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(PreprocessError, match=r"nowhere\.png"):
        preprocess(tmp_path / "nowhere.png")


def test_too_many_pixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (5000, 4000)).save(path)  # small file, 20 megapixels
    with pytest.raises(PreprocessError, match=r"huge\.png.*5000 x 4000.*4096"):
        preprocess(path)
    with pytest.raises(PreprocessError, match="4096"):
        preprocess(np.zeros((4100, 4100), np.uint8))


def test_too_many_bytes_is_refused():
    with pytest.raises(PreprocessError, match=r"big\.jpg.*20 MB"):
        preprocess(b"\xff" * (MAX_BYTES + 1), name="big.jpg")


def test_unsupported_arrays_and_sizes_are_refused():
    with pytest.raises(PreprocessError, match="shape"):
        preprocess(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(PreprocessError, match="size"):
        preprocess(np.zeros((28, 28), np.uint8), size=1000)


# ---------------------------------------------------------------- other sizes


def test_sklearn_digits_at_8x8_fill_the_frame():
    """The sklearn digits fill their 8x8 frame; a large copy comes back close."""
    small = load_dataset("sklearn-digits").x_test[:60]
    correlations = []
    for digit in small:
        large = np.asarray(
            Image.fromarray(digit).resize((96, 96), Image.Resampling.BILINEAR)
        )
        result = preprocess(np.pad(large, 40), size=8)
        assert result.centred.shape == (8, 8)
        assert max(result.scaled.shape) == frame_for(8).box == 8
        correlations.append(correlation(result.centred, digit))
    assert np.median(correlations) > 0.9


def test_other_sizes_keep_mnist_proportions(digits):
    frame = frame_for(20)
    assert frame.box == 14 and frame.centre == "mass"
    assert_mnist_frame(preprocess(render(digits[11]), size=20), size=20, box=14)


# ---------------------------------------------------------------- the steps


def test_steps_show_the_pipeline(digits):
    ink = 255 - render(digits[12], canvas=WORK_SIDE, box=120)
    result = preprocess(ink)
    assert list(result.steps()) == ["raw", "cleaned", "cropped", "scaled", "centred"]
    assert np.array_equal(result.raw, ink)  # grayscale as given
    assert result.inverted
    assert result.cleaned.shape == ink.shape
    assert result.cleaned[0].max() == 0  # white on black
    rows, cols = np.nonzero(result.cleaned)
    assert result.cropped.shape == (np.ptp(rows) + 1, np.ptp(cols) + 1)
    assert max(result.scaled.shape) == 20
    assert all(step.dtype == np.uint8 for step in result.steps().values())


def test_large_images_are_worked_on_reduced(digits):
    ink = render(digits[13], canvas=2000, box=1400)
    result = preprocess(encode(ink, "PNG"))
    assert max(result.raw.shape) <= WORK_SIDE
    assert shift_tolerant_correlation(result.centred, digits[13]) > 0.8


# ---------------------------------------------------------------- no margin


def ink_box(digit: np.ndarray, level: int = 1) -> np.ndarray:
    """A 28x28 digit cut to the box of its ink at `level` and above."""
    rows, cols = np.nonzero(digit >= level)
    return digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def tight_crop(digit: np.ndarray, scale: int) -> np.ndarray:
    """Dark ink on light paper, scaled up and cut where the ink reaches 40% of
    its strength: no margin, the ink on all four edges. (H, W) uint8."""
    side = 28 * scale
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.LANCZOS))
    return 230 - (ink_box(big, level=100).astype(np.float64) * 200 / 255).astype(
        np.uint8
    )


def test_digits_cropped_to_the_ink_come_back_close(digits):
    """With no margin the paper is measured on a restored one: a narrow 1 that
    is nearly all ink keeps its stroke whole."""
    correlations = []
    for digit in digits[:40]:
        crop = tight_crop(digit, scale=5)
        edges = [crop[0], crop[-1], crop[:, 0], crop[:, -1]]
        assert all(edge.min() < 160 for edge in edges)  # ink on every edge
        result = preprocess(crop)
        assert result.inverted
        assert_mnist_frame(result)
        assert result.cleaned.shape == result.raw.shape
        correlations.append(shift_tolerant_correlation(result.centred, digit))
    assert min(correlations) > 0.8 and np.median(correlations) > 0.9


def test_a_narrow_one_cropped_tight_keeps_its_ink(digits):
    ones = [d for d in digits if ink_box(d).shape[1] <= 6][:5]
    assert ones  # the first 300 test digits hold narrow 1s
    for digit in ones:
        result = preprocess(tight_crop(digit, scale=6))
        # The whole stroke survives: as much ink as the digit had itself.
        assert result.centred.sum() > 0.7 * digit.sum()


def test_a_bold_digit_cropped_tight_keeps_the_middle_of_its_strokes(digits):
    """Ink filling most of its image once drew the lighting fit up to the ink's
    own level, and the middles of the strokes were wiped out as background: a
    bold 2 came out as a ring and was read as 0."""
    for digit in [d for d in digits if d.sum() > 0][:10]:
        bold = ndimage.grey_dilation(digit, footprint=np.ones((4, 4), bool))
        result = preprocess(tight_crop(bold, scale=6))
        # As much ink as the bold digit with its margin, not a hollow outline.
        framed = preprocess(255 - np.kron(bold, np.ones((6, 6), np.uint8)))
        assert result.centred.sum() > 0.85 * framed.centred.sum()
        assert shift_tolerant_correlation(result.centred, framed.centred) > 0.9


def test_a_digit_resized_to_fill_a_square_is_narrowed_and_placed_mnist_way(digits):
    for digit in digits[:20]:
        box = ink_box(digit)
        square = np.asarray(Image.fromarray(box).resize((56, 56), Image.LANCZOS))
        result = preprocess(square)
        assert_mnist_frame(result)
        # Kept square it would be 20 wide. Narrowed to TYPICAL_ASPECT it is at
        # most 18: the box is fitted at the ink's half-level edge, which a
        # resize to 56 pixels blurs more across than along.
        height, width = result.scaled.shape
        assert height == 20 and width <= round(TYPICAL_ASPECT * 20) + 2


def test_wide_digits_in_other_images_keep_their_proportions(digits):
    """Only a square image filled by its ink is taken as resized: the same
    digit twice as wide as tall, with a margin, stays twice as wide."""
    box = ink_box(digits[0])
    wide = np.asarray(Image.fromarray(box).resize((80, 40), Image.LANCZOS))
    result = preprocess(np.pad(wide, 20))
    # Narrowed, it would be 20 tall and 16 wide.
    assert result.scaled.shape[1] == 20 and result.scaled.shape[0] <= 13
