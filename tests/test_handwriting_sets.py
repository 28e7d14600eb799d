"""The handwriting test sets (tests/handwriting_sets.py) make what they claim,
from MNIST's test split only, and the shipped default CNN reads each set at
least as well as it does today (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from handwriting_sets import (
    LETTERS,
    NOT_A_DIGIT,
    SETS,
    VISIBLE,
    HandwritingSet,
    model_inputs,
    stroke_width,
)
from PIL import Image

from digits.data import Dataset

N = 200  # images per set: enough for a lower bound, quick to preprocess
SEED = 0


class TestSplitOnly:
    """A dataset that holds only MNIST's test split: reading anything else
    (``x_train``, ``y_train``) fails."""

    __test__ = False  # not a pytest class

    def __init__(self, mnist: Dataset) -> None:
        self.x_test = mnist.x_test
        self.y_test = mnist.y_test

    def __getattr__(self, name: str):
        raise AssertionError(f"a handwriting set read {name} from the dataset")


@pytest.fixture(scope="module")
def sets(mnist) -> dict[str, HandwritingSet]:
    split = TestSplitOnly(mnist)
    return {name: make(split, N, SEED) for name, make in SETS.items()}


def ink(image: np.ndarray, dark_ink: bool = True) -> np.ndarray:
    """Dark ink on light paper (or light on dark) as float ink 0..1."""
    values = image.astype(np.float64)
    low, high = values.min(), values.max()
    values = high - values if dark_ink else values - low
    return values / (high - low)


def plain(digit: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A test digit with a 4-pixel margin, scaled to `shape`: float ink 0..1."""
    padded = Image.fromarray(np.pad(digit, 4).astype(np.float32) / 255, mode="F")
    return np.clip(np.asarray(padded.resize(shape[::-1], Image.LANCZOS)), 0, 1)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ---------------------------------------------------------------- what they make


@pytest.mark.parametrize("name", list(SETS))
def test_images_are_uploadable_grayscale(sets, name):
    images = sets[name]
    assert len(images) == N == len(images.labels) == len(images.sources)
    for image in images.images:
        assert image.ndim == 2 and image.dtype == np.uint8
        assert max(image.shape) >= 28  # a tight 1 may be narrower
        # Ink that contrasts with its paper (some scribbles are faint).
        assert np.ptp(image) > (30 if name == "non_digits" else 100)


@pytest.mark.parametrize("name", list(SETS))
def test_sets_are_repeatable(mnist, sets, name):
    again = SETS[name](mnist, N, SEED)
    for a, b in zip(again.images[:20], sets[name].images[:20], strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", [name for name in SETS if name != "non_digits"])
def test_digits_come_from_the_test_split(mnist, sets, name):
    """The fixture gives the generators a dataset with only the test split;
    each image's source is a test digit with its label, distinct within a set."""
    images = sets[name]
    assert ((images.sources >= 0) & (images.sources < len(mnist.x_test))).all()
    assert len(np.unique(images.sources)) == N
    assert np.array_equal(images.labels, mnist.y_test[images.sources])


def test_rendered_digits_look_like_their_source(mnist, sets):
    images = sets["rendered"]
    for image, source in zip(images.images[:50], images.sources[:50], strict=True):
        assert correlation(ink(image), plain(mnist.x_test[source], image.shape)) > 0.95


def visible_box(digit: np.ndarray, level: float = 0.35) -> np.ndarray:
    """A test digit cut to the box of its ink at `level` of full strength."""
    rows, cols = np.nonzero(digit >= level * 255)
    return digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def shrunk(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Float ink 0..1 averaged down to `shape` (h, w)."""
    big = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(big.resize(shape[::-1], Image.BOX))


def test_tight_crops_have_ink_on_every_edge(mnist, sets):
    images = sets["tight"]
    assert images.dark_ink.all()
    for image, source in zip(images.images, images.sources, strict=True):
        paper = float(image.max())
        edges = [image[0], image[-1], image[:, 0], image[:, -1]]
        assert all(paper - edge.min() >= 20 for edge in edges)
        # No margin: the source digit's ink box, scaled to the crop, is the
        # crop (cut where the ink reaches 20-50% of its strength, so at 35%
        # the boxes match within a few percent).
        box = visible_box(mnist.x_test[source])
        assert correlation(shrunk(ink(image), box.shape), box) > 0.85


def test_stretched_digits_fill_a_square_whatever_their_shape(mnist, sets):
    images = sets["stretched"]
    aspects = []
    for image, source, dark in zip(
        images.images, images.sources, images.dark_ink, strict=True
    ):
        assert image.shape[0] == image.shape[1]
        # The square, squeezed back to the digit's own ink box, is the digit:
        # its ink filled the square, however tall or wide it was.
        box = visible_box(mnist.x_test[source], VISIBLE)
        assert correlation(shrunk(ink(image, dark), box.shape), box) > 0.9
        aspects.append(box.shape[0] / box.shape[1])
    # MNIST's digits are mostly taller than wide (1s up to 20 x 4): filling
    # the square changed nearly every one's aspect ratio, most by over 20%.
    change = np.abs(np.log(aspects))
    assert np.mean(change > np.log(1.05)) > 0.8
    assert np.mean(change > np.log(1.2)) > 0.5
    assert sum(image.shape == (28, 28) for image in images.images) >= N // 4
    assert 0.4 < images.dark_ink.mean() < 0.6  # both polarities


def test_european_ones_have_a_flag_and_sevens_a_crossbar(mnist, sets):
    images = sets["european"]
    assert set(images.kinds) == {"1-flag", "7-crossbar"}
    assert np.array_equal(images.labels == 1, images.kinds == "1-flag")
    assert 0.4 < np.mean(images.labels == 1) < 0.6
    found = []
    for image, source, label in zip(
        images.images, images.sources, images.labels, strict=True
    ):
        digit = plain(mnist.x_test[source], image.shape)
        extra = (ink(image) > 0.5) & (digit < 0.2)  # ink the plain digit lacks
        found.append(extra.sum() >= (0.04 * image.shape[0]) ** 2)
        if not found[-1]:
            continue
        rows, cols = np.nonzero(extra)
        top = np.nonzero(digit > 0.5)[0].min()
        if label == 1:  # down and to the left of the top of the 1
            assert rows.mean() > top
            assert cols.mean() < np.nonzero(digit[top] > 0.5)[0].max()
        else:  # a bar: wider than tall, below the 7's top stroke
            assert np.ptp(cols) > 1.5 * np.ptp(rows)
            assert rows.min() > top
    # Some MNIST 7s have a crossbar already, where the new one lands.
    assert np.mean(found) > 0.9


@pytest.mark.parametrize(("name", "low", "high"), [("thick", 1.3, 4), ("thin", 0, 0.8)])
def test_thick_and_thin_strokes_change_width(mnist, sets, name, low, high):
    images = sets[name]
    ratios = [
        stroke_width(ink(image))
        / stroke_width(plain(mnist.x_test[source], image.shape))
        for image, source in zip(images.images, images.sources, strict=True)
    ]
    assert low < np.median(ratios) < high
    assert np.mean([low < r < high for r in ratios]) > 0.9


def test_non_digits_cover_every_kind():
    images = SETS["non_digits"](None, N, SEED)
    assert (images.labels == NOT_A_DIGIT).all() and (images.sources == -1).all()
    kinds = set(images.kinds)
    assert {"dot", "noise", "scribble"} <= kinds
    assert {f"letter-{letter}" for letter in LETTERS} <= kinds
    assert set(LETTERS) == {"A", "K", "M", "W", "X"}
    # A 3x3 dot on a 28-pixel image, the example, is among them.
    dots = [i for i, k in zip(images.images, images.kinds, strict=True) if k == "dot"]
    assert any(
        d.shape == (28, 28) and (ink(d, dark) > 0.5).sum() == 9
        for d, dark in zip(dots, images.dark_ink[images.kinds == "dot"], strict=True)
    )


def test_the_engine_never_imports_the_test_sets():
    """Training augmentation (issue 18, item 2) is written apart from these."""
    package = Path(__file__).resolve().parents[1] / "digits"
    for path in package.rglob("*.py"):
        assert "handwriting_sets" not in path.read_text(), path


# ---------------------------------------------------------------- the default CNN

# The default CNN's accuracy on each set of N images (seed 0) today, less about
# two images, so that a change that reads them worse fails. Before issue 18:
# rendered 99.5%, tight 98.0%, stretched 96.5%, European 72.0%, thick 96.0%,
# thin 98.5%. After item 1 (preprocessing without a margin): tight 99.5%,
# stretched 97.5%. After item 2 (the defaults re-shipped, trained with
# augment="writers"): rendered 99.5%, tight 99.5%, stretched 99.0%, European
# 98.5%, thick 96.0%, thin 100%. Today (20 epochs and the polish, session 11):
# rendered 99.5%, tight 99.5%, stretched 99.5%, European 98.5%, thick 99.0%,
# thin 100%.
LOWER_BOUNDS = {
    "rendered": 0.985,
    "tight": 0.985,
    "stretched": 0.985,
    "european": 0.975,
    "thick": 0.98,
    "thin": 0.99,
}
# Non-digits answered "sure" by digits.sure: 0.5% of N today (3% after item 3);
# the bare confidence is no guide (about half of them get 90% or more).
MOST_SURE_NON_DIGITS = 0.02


@pytest.fixture(scope="module")
def cnn():
    from digits.store import load_model

    return load_model("default-cnn")


@pytest.mark.parametrize("name", list(LOWER_BOUNDS))
def test_default_cnn_reads_each_set(sets, cnn, name):
    images = sets[name]
    inputs, refused = model_inputs(images)
    right = (cnn.predict(inputs) == images.labels) & ~refused
    assert right.mean() >= LOWER_BOUNDS[name]


def test_default_cnn_is_not_sure_of_non_digits(sets, cnn):
    from digits import sure

    inputs, refused = model_inputs(sets["non_digits"])
    thresholds = sure.thresholds_for("default-cnn", cnn)
    answers = sure.is_sure(inputs, cnn.predict_proba(inputs), thresholds) & ~refused
    assert answers.mean() <= MOST_SURE_NON_DIGITS
