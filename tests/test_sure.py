"""Not sure (digits/sure.py, issue 18 item 3): the thresholds come from the
validation digits only, are cached per model, and the shipped default CNN says
"not sure" to most non-digit pictures while staying sure of real digits.

The bounds on the tests' own sets (``tests/handwriting_sets.py``, made by other
generators than the pictures of ``digits/ood.py`` the detector learned from) sit
a point or two under what was measured (benchmarks/README.md, issue 18 section),
so that a change which loses the detector fails.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from handwriting_sets import non_digits, rendered
from test_handwriting_sets import TestSplitOnly

from digits import data, ood, store, sure
from digits.errors import DataError, NoDigitFound
from digits.preprocess import preprocess

N = 300  # images per set for the bounds
SEED = 0
# What the shipped default CNN reaches on N images of seed 0 (97.0%, 98.0% and
# 97.7%), less about 1-2 points.
MIN_NON_DIGITS_NOT_SURE = 0.95
MIN_RENDERED_SURE = 0.97
MIN_OOD_NOT_SURE = 0.96  # on digits/ood.py's own pictures


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))


class Trap:
    """A test split that fails if anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test images were read ({name})")

    def __len__(self):
        raise AssertionError("the test images were read (len)")

    def __getitem__(self, key):
        raise AssertionError("the test images were read")


@pytest.fixture
def no_test_images(mnist, monkeypatch):
    """load_dataset gives MNIST without its test split, and every image the
    model is asked about is recorded."""
    trapped = mnist._replace(x_test=Trap(), y_test=Trap())
    monkeypatch.setattr(data, "load_dataset", lambda name, *a, **k: trapped)
    seen = []
    real = store.predict_proba_full

    def spy(model, X, n_classes):
        seen.append(np.asarray(X))
        return real(model, X, n_classes)

    monkeypatch.setattr(store, "predict_proba_full", spy)
    return seen


def test_thresholds_come_from_the_validation_digits_only(mnist, no_test_images):
    t = sure.thresholds_for("default-cnn")
    split = data.validation_split(mnist)
    (asked,) = no_test_images
    expected = mnist.x_train[split.validation].astype(np.float32) / 255
    np.testing.assert_array_equal(asked, expected)
    assert t.validation == "the last 5,000 training images"
    # A digit model: confidence and the detector decide, not the statistics.
    assert t.min_digit == detector_threshold()["min_digit"] > 0
    assert 0.5 < t.min_confidence < 1 and t.max_ink == 1 and t.max_solid == 784
    # Confidence refuses CONFIDENCE_SHARE of them by construction; the detector,
    # chosen on these digits read as uploaded pages (99.5% pass), refuses about
    # 2% of them as they are, unpreprocessed (measured 97.3% sure in all).
    assert 0.96 <= t.sure_share <= 1 - sure.CONFIDENCE_SHARE + 1e-9


def test_choose_refuses_each_share():
    rng = np.random.default_rng(0)
    images = (rng.random((2000, 28, 28)) < 0.15).astype(np.float32)
    proba = rng.dirichlet(np.ones(10) * 0.1, 2000)
    t = sure.choose(images, proba, "made up")
    stats = sure.statistics(images, proba)
    assert np.mean(stats["confidence"] < t.min_confidence) <= sure.CONFIDENCE_SHARE
    assert np.mean(stats["ink"] > t.max_ink) <= sure.INK_SHARE + 1e-3
    assert np.mean(sure.is_sure(images, proba, t)) == pytest.approx(t.sure_share)
    assert t.sure_share >= 1 - sure.REFUSED_SHARE - 1e-3


def test_statistics_of_simple_images():
    blank = np.zeros((4, 28, 28), np.float32)
    blank[0, 10:18, 10:18] = 1  # a solid square: one piece, 4x4 deep inside
    blank[1, 5, 5] = blank[1, 20, 20] = blank[1, 5, 20] = 1  # three specks
    blank[2, 4:24, 14] = 1  # a stroke, one pixel wide
    blank[3, 4:24, 4:24:5] = 1  # four strokes side by side, 20 rows tall
    blank[3, 4, 4:20] = 1  # joined at the top: one row crosses one stroke
    stats = sure.statistics(blank, np.eye(10)[:4])
    assert stats["pieces"].tolist() == [1, 3, 1, 1]
    assert stats["solid"].tolist() == [16, 0, 0, 0]
    assert stats["crossings"].tolist() == [0, 0, 0, 19]
    assert stats["ink"][0] == pytest.approx(64 / 784)
    assert stats["confidence"].tolist() == [1, 1, 1, 1]


def test_thresholds_are_cached_per_model(mnist, monkeypatch):
    first = sure.thresholds_for("default-cnn")
    [cache] = (store.runs_dir() / store.CACHE_DIR / "default-cnn").glob("sure-*.json")
    assert json.loads(cache.read_text())["min_confidence"] == first.min_confidence

    def never(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(store, "predict_proba_full", never)
    assert sure.thresholds_for("default-cnn") == first
    # A damaged cache is measured afresh; the MLP has its own thresholds.
    monkeypatch.undo()
    cache.write_text('{"min_confidence": "high"}')
    assert sure.thresholds_for("default-cnn") == first
    mlp = sure.thresholds_for("default-mlp")
    assert mlp.min_confidence != first.min_confidence


def test_without_the_dataset_confidence_and_the_detector_decide(mnist, monkeypatch):
    def offline(name, *args, **kwargs):
        raise DataError("offline")

    monkeypatch.setattr(data, "load_dataset", offline)
    t = sure.thresholds_for("default-cnn")
    assert not t.measured and t.min_confidence == sure.FALLBACK_CONFIDENCE
    assert t.min_digit == detector_threshold()["min_digit"]
    digits = mnist.x_train[-3:].astype(np.float32) / 255  # validation digits
    digits[2] = 0
    digits[2, 4:24, 4:24] = 1  # a blot, given a confident answer
    confident, hesitant = [0.95] + [0.05 / 9] * 9, [0.5, 0.5] + [0.0] * 8
    proba = np.array([confident, hesitant, confident])
    assert sure.is_sure(digits, proba, t).tolist() == [True, False, False]


def test_reasons_are_plain_words():
    t = sure.Thresholds(0.9, 0.3, 30, 3, 2)
    image = np.zeros((28, 28), np.float32)
    image[6:22, 6:22] = 1  # a filled square: too much ink, and solid
    found = sure.reasons(image, np.array([0.6, 0.4]), t)
    assert found == [
        "the model hesitates between digits",
        "there is more solid ink than a pen stroke makes",
    ]
    assert sure.reasons(image, np.array([1.0, 0.0]), sure.FALLBACK) == []
    with_detector = sure.Thresholds(0.5, 1, 1e9, 1e9, 1e9, min_digit=0.5)
    assert sure.reasons(image, np.eye(10)[3], with_detector) == [
        "it does not look like a digit"
    ]


# -- the "is it a digit?" detector --------------------------------------------------


def detector_threshold() -> dict:
    return json.loads((ood.DETECTOR_DIR / ood.THRESHOLD_FILE).read_text())


class Recorded(np.ndarray):
    """An array that records the keys it is indexed with."""

    keys: list

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            self.keys.append(key)
        return np.asarray(self)[key]


def test_the_detector_learns_from_training_digits_and_is_judged_on_validation(mnist):
    """Its training digits never include a validation or test image; its
    threshold's digits are MNIST's validation digits."""
    x_train = mnist.x_train.view(Recorded)
    x_train.keys = []
    recorded = mnist._replace(x_train=x_train, x_test=Trap(), y_test=Trap())
    made = ood.digit_or_not(recorded, 60, seed=3, held_out=20)
    split = data.validation_split(mnist)
    trained, judged = x_train.keys
    assert len(trained) == 30 and np.isin(trained, split.train).all()
    np.testing.assert_array_equal(judged, split.validation[:20])
    assert made.x_train.dtype == np.uint8 and made.x_train.shape[1:] == (28, 28)
    assert (made.y_train == 1).sum() == 30 and (made.y_test == 1).sum() == 20
    assert 25 <= (made.y_train == 0).sum() <= 30  # specks may hold no digit
    assert made.class_names == ood.DETECTOR_CLASSES


def test_the_shipped_detector_and_its_threshold():
    record = detector_threshold()
    assert record["share"] == ood.DETECTOR_SHARE
    assert record["digits_passed"] >= 1 - ood.DETECTOR_SHARE - 1e-3
    assert "validation" in record["validation"]
    run = store.open_run(ood.DETECTOR_DIR, allow_paths=True)
    assert tuple(run.class_names) == ood.DETECTOR_CLASSES
    assert sure.detector_applies(store.open_run("default-cnn"))
    assert sure.detector_applies(store.open_run("default-mlp"))


# -- on the shipped default CNN -----------------------------------------------------


def model_inputs(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) inputs as predict reads them, and which were refused."""
    inputs = np.zeros((len(images), 28, 28), np.float32)
    refused = np.zeros(len(images), bool)
    for k, image in enumerate(images):
        try:
            inputs[k] = preprocess(image, 28).image
        except NoDigitFound:
            refused[k] = True
    return inputs, refused


def sure_share(images: list[np.ndarray]) -> float:
    """The share of ``images`` the shipped default CNN answers sure."""
    model = store.load_model("default-cnn")
    inputs, refused = model_inputs(images)
    proba = store.predict_proba_full(model, inputs, 10)
    answers = sure.is_sure(inputs, proba, sure.thresholds_for("default-cnn", model))
    return float((answers & ~refused).mean())


def test_ood_pictures_are_made_as_documented():
    images, kinds = ood.non_digit_pictures(60, seed=1)
    again, _ = ood.non_digit_pictures(60, seed=1)
    assert sorted(set(kinds)) == sorted(ood.KINDS)
    for a, b in zip(images, again, strict=True):
        assert a.dtype == np.uint8 and a.ndim == 2 and 28 <= a.shape[0] <= 160
        np.testing.assert_array_equal(a, b)


def test_the_default_is_not_sure_of_non_digits_and_sure_of_digits(mnist):
    split = TestSplitOnly(mnist)
    not_sure = 1 - sure_share(non_digits(split, N, SEED).images)
    digits_sure = sure_share(rendered(split, N, SEED).images)
    own, _ = ood.non_digit_pictures(N, seed=SEED)
    own_not_sure = 1 - sure_share(own)
    assert not_sure >= MIN_NON_DIGITS_NOT_SURE, not_sure
    assert digits_sure >= MIN_RENDERED_SURE, digits_sure
    assert own_not_sure >= MIN_OOD_NOT_SURE, own_not_sure
