"""Not sure: when a model's answer should not be taken as a digit.

A classifier always names one of its classes, even for a dot, a square of noise
or a letter. This module says, for each preprocessed image and the model's
probabilities, whether the answer is *sure*: the model is confident enough AND
the image looks like what the model learned from. Every threshold comes from
**validation** images, never test images.

For models of the ten digits in 28x28 images (MNIST's shape; the shipped CNN and
MLP), two checks:

- ``confidence``: the top probability must be at least its `CONFIDENCE_SHARE`
  quantile on the run's validation digits (a hesitant answer is not sure);
- ``digit``: the "is it a digit?" detector, a small CNN shipped in
  ``digits/pretrained/digit-or-not`` (trained by ``python -m digits.ood``), must
  give the image at least the "digit" probability that 99.5% of MNIST's
  validation digits reach when read as uploaded pages (``threshold.json``
  beside it). It learned from MNIST training digits, as pages and as they are,
  and from the non-digit pictures `digits.ood` draws (specks, noise, tangles,
  hatching, blots, zig-zags, stroked glyphs, and typed letters unlike any
  digit, A and K among them), never from the test suite's non-digits, which
  other code draws.

Without the detector (clothes, 8x8 digits, other shapes), four image statistics
take its place, each against a quantile of the validation images:

- ``ink``: the mean ink of the input must be at most its ``1 - INK_SHARE``
  quantile (a blot or noise has too much; there is no lower bound, which would
  refuse 1s drawn with a thin pen);
- ``solid``: the number of pixels deep inside solid ink (still ink after a 5x5
  erosion) must be at most its ``1 - SOLID_SHARE`` quantile (pen strokes are
  thin; blots and filled shapes are not);
- ``pieces``: the number of separate pieces of ink (8-connected, at ink 0.3)
  must be at most its ``1 - PIECES_SHARE`` quantile (a digit is one or two
  strokes; specks and noise are many);
- ``crossings``: the number of rows crossing the ink 4 or more times must be at
  most its ``1 - CROSSINGS_SHARE`` quantile (a digit's rows cross at most three
  strokes; an M, a W, a zig-zag or hatching cross more). It was added after
  seeing the test suite's letters M and W get through.

The shares were chosen on MNIST's validation digits as pages (`digits.ood`'s
``digit_page``) and on `digits.ood`'s own pictures (benchmarks/README.md, issue
18): with the detector, a confidence share of 0.5% keeps 98.9% of the
validation pages sure and leaves 1.7% of those pictures sure (0.75% and 1%:
98.7% and 98.5% sure, 1.5% and 1.4% of the pictures). The four statistics on
top of the detector cost 0.4-0.7 points of sure validation pages for 0.1-0.2
points more of those pictures refused (measured with the previous detector), so
they are left out for it.

Thresholds are a function of the model (its confidence) and of its dataset's
validation split: `thresholds_for(run)` computes them on first use and caches
them as JSON beside the run (for the shipped models: under the runs folder,
like the prediction caches), keyed by the model files' SHA-256, the dataset's
name, the detector's threshold and `RULE_VERSION`, so a retrained model gets
new ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from digits import files, store
from digits.errors import DigitsError

RULE_VERSION = 4  # bump when the statistics or shares change: old caches are ignored
CONFIDENCE_SHARE = 0.005  # validation digits refused for a low top probability
INK_SHARE = 0.002  # ... for too much ink
SOLID_SHARE = 0.002  # ... for too much solid ink
PIECES_SHARE = 0.001  # ... for too many separate pieces of ink
CROSSINGS_SHARE = 0.005  # ... for rows crossing 4+ strokes
# At most this share of validation images is refused by the statistics' rule.
REFUSED_SHARE = (
    CONFIDENCE_SHARE + INK_SHARE + SOLID_SHARE + PIECES_SHARE + CROSSINGS_SHARE
)
INK_LEVEL = 0.3  # a pixel this bright (0..1) counts as ink for `pieces`
SOLID_LEVEL = 0.5  # ... and for `solid`
CROSS_LEVEL = 0.4  # ... and for `crossings`
MANY_CROSSINGS = 4  # a row crossing this many strokes counts for `crossings`
SOLID_SIDE = 5  # a pixel is deep inside solid ink if this square around it is ink
DETECTOR_SHAPE = (28, 28)  # the images the detector reads
CACHE_PREFIX = "sure"
MAX_CACHE_BYTES = 4096


@dataclass(frozen=True)
class Thresholds:
    """What a sure answer needs, from one run's validation digits.

    min_digit : the smallest "digit" probability the detector may give (0: the
        detector does not apply, as for clothes or 8x8 images).
    min_confidence : the smallest top probability that is sure.
    max_ink : the most mean ink (0..1) of a digit.
    max_solid : the most pixels deep inside solid ink.
    max_pieces : the most separate pieces of ink.
    max_crossings : the most rows crossing `MANY_CROSSINGS` strokes or more.
    validation : which images the thresholds come from, in words.
    sure_share : the share of those validation images that are sure.
    """

    min_confidence: float
    max_ink: float
    max_solid: float
    max_pieces: float
    max_crossings: float
    validation: str = ""
    sure_share: float = 1.0
    min_digit: float = 0.0

    @property
    def measured(self) -> bool:
        """False for `FALLBACK`: no validation digits were measured."""
        return self is not FALLBACK and self.validation != FALLBACK.validation


# When a run's validation digits cannot be read: a top probability of 90% or
# more is sure, and the image is not checked. Never cached.
FALLBACK_CONFIDENCE = 0.9
FALLBACK = Thresholds(
    min_confidence=FALLBACK_CONFIDENCE,
    max_ink=1.0,
    max_solid=1e9,
    max_pieces=1e9,
    max_crossings=1e9,
    validation="unavailable (the run's dataset could not be loaded)",
    sure_share=float("nan"),
)


def statistics(
    images: np.ndarray, proba: np.ndarray, detector: bool = False
) -> dict[str, np.ndarray]:
    """The statistics of each image.

    images : (n, h, w) float model inputs, white ink 0..1 on black.
    proba : (n, k) the model's probabilities for them.
    detector : the detector's "digit" probability in place of the four image
        statistics, which its rule does not check (28x28 only).
    Returns {"confidence", "ink", "solid", "pieces", "crossings"}, or with
    ``detector`` {"confidence", "digit"}; each (n,) float64.
    """
    confidence = np.asarray(proba, np.float64).max(axis=1)
    if detector:
        return {"confidence": confidence, "digit": digit_probability(images)}
    images = np.asarray(images, dtype=np.float64)
    block = np.ones((SOLID_SIDE, SOLID_SIDE), bool)
    eight = np.ones((3, 3), bool)  # diagonal neighbours join a piece
    return {
        "confidence": confidence,
        "ink": images.reshape(len(images), -1).mean(axis=1),
        "solid": np.array(
            [ndimage.binary_erosion(im >= SOLID_LEVEL, block).sum() for im in images],
            dtype=np.float64,
        ),
        "pieces": np.array(
            [ndimage.label(im >= INK_LEVEL, eight)[1] for im in images],
            dtype=np.float64,
        ),
        "crossings": _crossings(images),
    }


# -- the "is it a digit?" detector ------------------------------------------------


@functools.cache
def _detector() -> tuple[object, float] | None:
    """The shipped detector and its threshold, or None if it is not installed
    (then only the statistics are checked). Loaded once: its files' SHA-256 are
    checked against its metadata as for any run."""
    from digits.ood import DETECTOR_DIR, THRESHOLD_FILE

    if not (DETECTOR_DIR / THRESHOLD_FILE).is_file():
        return None
    record = json.loads(files.read_bounded(DETECTOR_DIR / THRESHOLD_FILE, 4096))
    model = store.load_model(DETECTOR_DIR, allow_paths=True)
    return model, float(record["min_digit"])


def detector_applies(run: store.Run) -> bool:
    """True for models of the ten digits in 28x28 images, the detector's own."""
    from digits.data import DIGIT_NAMES

    return (
        tuple(run.image_shape) == DETECTOR_SHAPE
        and tuple(run.class_names) == DIGIT_NAMES
        and _detector() is not None
    )


def digit_probability(images: np.ndarray) -> np.ndarray:
    """(n,) the detector's probability that each (n, 28, 28) input is a digit."""
    found = _detector()
    if found is None or tuple(np.shape(images)[1:]) != DETECTOR_SHAPE:
        return np.ones(len(images))
    return (
        found[0].predict_proba(np.asarray(images, np.float32))[:, 1].astype(np.float64)
    )


def _crossings(images: np.ndarray) -> np.ndarray:
    """(n,) how many rows of each (n, h, w) image cross `MANY_CROSSINGS` or more
    strokes: a stroke starts where a row goes from paper to ink."""
    ink = (images >= CROSS_LEVEL).astype(np.int8)
    starts = (np.diff(ink, axis=2, prepend=0) == 1).sum(axis=2)  # (n, h)
    return (starts >= MANY_CROSSINGS).sum(axis=1).astype(np.float64)


def choose(
    images: np.ndarray, proba: np.ndarray, validation: str = "", min_digit: float = 0.0
) -> Thresholds:
    """Thresholds from validation digits: each statistic refuses its share.

    images : (n, h, w) validation digits as model inputs; proba : (n, k) the
    model's probabilities for them. Never pass test images. min_digit : the
    detector's threshold (0 where it does not apply), chosen on MNIST's
    validation digits when it was trained.
    """
    if len(images) == 0:  # a training set too small to spare validation images
        everything = float(np.prod(images.shape[1:]))  # no pixel count exceeds it
        return Thresholds(
            0.0, 1.0, everything, everything, everything, "none (too few)"
        )
    stats = statistics(images, proba, detector=min_digit > 0)
    if min_digit > 0:
        # The detector replaces the four image statistics (see the module's
        # docstring): they cost more sure digits than they refuse non-digits.
        everything = float(np.prod(images.shape[1:]))
        limits = dict(
            max_ink=1.0,
            max_solid=everything,
            max_pieces=everything,
            max_crossings=everything,
        )
    else:
        limits = dict(
            max_ink=float(np.quantile(stats["ink"], 1 - INK_SHARE)),
            max_solid=float(np.quantile(stats["solid"], 1 - SOLID_SHARE)),
            max_pieces=float(np.quantile(stats["pieces"], 1 - PIECES_SHARE)),
            max_crossings=float(np.quantile(stats["crossings"], 1 - CROSSINGS_SHARE)),
        )
    chosen = Thresholds(
        min_confidence=float(np.quantile(stats["confidence"], CONFIDENCE_SHARE)),
        **limits,
        validation=validation,
        min_digit=min_digit,
    )
    share = float(_sure(stats, chosen).mean())
    return Thresholds(**{**asdict(chosen), "sure_share": share})


def _sure(stats: dict[str, np.ndarray], t: Thresholds) -> np.ndarray:
    confident = stats["confidence"] >= t.min_confidence
    if t.min_digit > 0:  # the detector's rule: the image statistics are not used
        return confident & (stats["digit"] >= t.min_digit)
    return (
        confident
        & (stats["ink"] <= t.max_ink)
        & (stats["solid"] <= t.max_solid)
        & (stats["pieces"] <= t.max_pieces)
        & (stats["crossings"] <= t.max_crossings)
    )


def is_sure(
    images: np.ndarray, proba: np.ndarray, thresholds: Thresholds
) -> np.ndarray:
    """(n,) bool: True where the answer is sure.

    images : (n, h, w) float model inputs 0..1; proba : (n, k) probabilities.
    """
    detector = thresholds.min_digit > 0
    return _sure(statistics(images, proba, detector), thresholds)


def reasons(image: np.ndarray, proba: np.ndarray, thresholds: Thresholds) -> list[str]:
    """Why one answer is not sure, in plain words (empty if it is sure).

    image : (h, w) float model input; proba : (k,) probabilities.
    """
    t = thresholds
    found_stats = statistics(image[None], proba[None], detector=t.min_digit > 0)
    stats = {k: v[0] for k, v in found_stats.items()}
    found = []
    if t.min_digit > 0 and stats["digit"] < t.min_digit:
        found.append("it does not look like a digit")
    if stats["confidence"] < t.min_confidence:
        found.append("the model hesitates between digits")
    if t.min_digit > 0:
        return found
    if stats["ink"] > t.max_ink or stats["solid"] > t.max_solid:
        found.append("there is more solid ink than a pen stroke makes")
    if stats["pieces"] > t.max_pieces:
        found.append("the ink is in more separate pieces than a digit has")
    if stats["crossings"] > t.max_crossings:
        found.append("it has more strokes side by side than a digit has")
    return found


# -- per run, cached --------------------------------------------------------------


def _cache_path(run: store.Run) -> Path:
    """Where ``run``'s thresholds are cached: the name holds a hash of the rule's
    version, the dataset's name and the model files' SHA-256 (so a retrained
    model, or a new rule, is measured afresh)."""
    model_sha = "".join(entry["sha256"] for entry in run.meta["files"].values())
    source = f"{RULE_VERSION}:{run.meta['dataset']['name']}:{model_sha}"
    if detector_applies(run):  # a retrained detector is measured afresh too
        source += f":{_detector()[1]!r}"
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = (
        store.runs_dir() / store.CACHE_DIR / run.name if run.pretrained else run.path
    )
    return folder / f"{CACHE_PREFIX}-{key}.json"


def _read(path: Path) -> Thresholds | None:
    """The thresholds cached in ``path``, or None if missing or not sane."""
    try:
        thresholds = Thresholds(**json.loads(files.read_bounded(path, MAX_CACHE_BYTES)))
    except (OSError, ValueError, TypeError):  # NotAFile, TooLarge are OSErrors
        return None
    numbers = [v for k, v in asdict(thresholds).items() if k != "validation"]
    if not all(isinstance(v, int | float) for v in numbers):
        return None
    return thresholds if np.isfinite(numbers).all() else None


def thresholds_for(run: store.Run | str, model=None) -> Thresholds:
    """The thresholds of ``run``, from its dataset's validation split.

    Computed once (a few seconds: the model reads the validation images), then
    cached as JSON (`_cache_path`); a cache that does not read back as finite
    thresholds is computed afresh. If the run's dataset cannot be loaded (a CSV
    file since moved, no network for MNIST), `FALLBACK`: confidence alone, and
    the detector where it applies.
    Pass ``model`` if it is already loaded.
    """
    from digits.data import load_dataset, validation_split

    run = store.open_run(run)
    path = _cache_path(run)
    cached = _read(path)
    if cached is not None:
        return cached
    min_digit = _detector()[1] if detector_applies(run) else 0.0
    try:
        dataset = load_dataset(run.meta["dataset"]["name"])
    except (DigitsError, OSError):
        # The detector needs no dataset: it still checks digit models.
        return replace(FALLBACK, min_digit=min_digit) if min_digit else FALLBACK
    split = validation_split(dataset)
    images = dataset.x_train[split.validation].astype(np.float32) / 255
    model = store.load_model(run) if model is None else model
    proba = store.predict_proba_full(model, images, len(run.class_names))
    chosen = choose(images, proba, split.rule, min_digit)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(path, json.dumps(asdict(chosen), indent=1).encode())
    except OSError:
        pass  # a read-only run still works, measured again next time
    return chosen
