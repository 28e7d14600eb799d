"""The shipped default CNN on digits as people supply them, not as MNIST stores them.

MNIST test digits are rendered the way a drawing or a photo arrives (large, shifted,
rescaled, either polarity, with or without alpha, PNG or JPEG, on lit paper with
grid lines) and must come back through ``digits.preprocess`` to the same answer.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from digits.preprocess import preprocess
from digits.store import load_model


@pytest.fixture(scope="module")
def cnn():
    return load_model("default-cnn")


def render(
    digit: np.ndarray,
    *,
    box: int,
    canvas: int,
    offset: tuple[int, int],
    dark_ink: bool,
    alpha: bool,
    fmt: str,
) -> bytes:
    """A 28x28 MNIST digit scaled to ``box`` px, placed on a larger canvas, encoded."""
    big = np.asarray(Image.fromarray(digit).resize((box, box), Image.LANCZOS))
    ink = np.zeros((canvas, canvas), np.uint8)
    r, c = offset
    ink[r : r + box, c : c + box] = big
    if alpha and fmt == "PNG":
        colour = 0 if dark_ink else 255
        rgba = np.zeros((canvas, canvas, 4), np.uint8)
        rgba[..., :3] = colour
        rgba[..., 3] = ink  # a transparent canvas: the stroke is in the alpha
        image = Image.fromarray(rgba, "RGBA")
    else:
        image = Image.fromarray(255 - ink if dark_ink else ink).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def random_rendering(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    canvas = int(rng.integers(120, 400))
    box = int(rng.integers(canvas // 3, canvas * 9 // 10))
    room = canvas - box
    return render(
        digit,
        box=box,
        canvas=canvas,
        offset=(int(rng.integers(0, room + 1)), int(rng.integers(0, room + 1))),
        dark_ink=bool(rng.integers(2)),
        alpha=bool(rng.integers(2)),
        fmt=str(rng.choice(["PNG", "JPEG"])),
    )


def model_input(files: list[bytes]) -> np.ndarray:
    return np.stack([preprocess(f).image for f in files])


def test_predictions_survive_rendering_for_98_percent(cnn, mnist):
    rng = np.random.default_rng(0)
    idx = rng.choice(len(mnist.x_test), 400, replace=False)
    digits = mnist.x_test[idx]
    before = cnn.predict(digits)
    after = cnn.predict(model_input([random_rendering(d, rng) for d in digits]))
    assert (before == after).mean() >= 0.98


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scale=st.floats(0.3, 0.9),
    canvas=st.integers(100, 420),
    where=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    dark_ink=st.booleans(),
    alpha=st.booleans(),
    fmt=st.sampled_from(["PNG", "JPEG"]),
)
def test_any_rendering_keeps_the_prediction(
    cnn, mnist, scale, canvas, where, dark_ink, alpha, fmt
):
    # 40 fixed digits, all rendered the same drawn way: at most one may change.
    digits = mnist.x_test[:40]
    box = max(20, int(scale * canvas))
    room = canvas - box
    offset = (int(where[0] * room), int(where[1] * room))
    files = [
        render(
            d,
            box=box,
            canvas=canvas,
            offset=offset,
            dark_ink=dark_ink,
            alpha=alpha,
            fmt=fmt,
        )
        for d in digits
    ]
    changed = (cnn.predict(digits) != cnn.predict(model_input(files))).sum()
    assert changed <= 1


def photo_of(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dark ink on unevenly lit paper with grid lines and sensor noise, as JPEG."""
    size = 300
    rows, cols = np.mgrid[0:size, 0:size]
    paper = 170 + 70 * (cols / size) * (0.6 + 0.4 * rows / size)  # a shadowed side
    paper[::25, :] -= 45  # squared paper
    paper[:, ::25] -= 45
    stroke = np.asarray(Image.fromarray(digit).resize((200, 200), Image.LANCZOS))
    page = paper.copy()
    page[50:250, 50:250] -= stroke / 255 * (page[50:250, 50:250] - 35)
    page += rng.normal(0, 6, page.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)).save(
        out, "JPEG", quality=80
    )
    return out.getvalue()


def test_photos_of_digits_on_grid_paper_are_recognised(cnn, mnist):
    rng = np.random.default_rng(1)
    idx = rng.choice(len(mnist.x_test), 30, replace=False)
    predicted = cnn.predict(model_input([photo_of(d, rng) for d in mnist.x_test[idx]]))
    assert (predicted == mnist.y_test[idx]).mean() >= 29 / 30


def test_cli_predicts_mnist_digits_rendered_at_280px(mnist, tmp_path):
    idx = np.random.default_rng(0).choice(len(mnist.x_test), 1000, replace=False)
    files = []
    for i in idx:
        path = tmp_path / f"{i:05d}.png"
        Image.fromarray(mnist.x_test[i]).resize((280, 280), Image.LANCZOS).save(path)
        files.append(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "digits", "predict", "default", *files, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    predictions = json.loads(out.stdout)["predictions"]
    labels = np.array([int(p["label"]) for p in predictions])
    assert len(predictions) == 1000
    assert all(len(p["probabilities"]) == 10 for p in predictions)
    assert (labels == mnist.y_test[idx]).mean() >= 0.99
