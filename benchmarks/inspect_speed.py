"""Server time of inspecting a drawn digit on the Inspect page, and the cost of the
training-health callback.

Target: one inspect of a drawn digit (activations + saliency of the default CNN,
plus one probe update scoring the moved digit with the default CNN and the default
MLP) within 200 ms on the server.

    DIGITS_DATA_DIR=../shared/data PYTHONPATH=. \
        python benchmarks/inspect_speed.py --repeats 30

The digit is a "7" drawn on a 280x280 canvas and preprocessed as the Draw page
does. Times are medians (and 90th percentiles) of ``--repeats`` calls after one
warm-up, measured with time.perf_counter in this process. (The file is not
called inspect.py: run as a script, that name would shadow the standard
library's ``inspect`` module.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw

from digits import explain, preprocess, store
from digits.engine.system import blas_threads
from digits.estimator import CNNClassifier


def drawn_seven() -> np.ndarray:
    """A "7" as the canvas sends it (RGBA, white ink on black), preprocessed."""
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 255))
    pen = ImageDraw.Draw(canvas)
    pen.line([(70, 60), (210, 60), (120, 240)], fill=(255, 255, 255, 255), width=20)
    return preprocess.preprocess(np.asarray(canvas)).image


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median and 90th percentile of ``fn()``'s wall time, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def health_overhead(repeats: int) -> tuple[float, float]:
    """(ms per measurement, ms per training batch) for the default CNN, batch 64."""
    from digits.data import load_dataset

    ds = load_dataset("mnist")
    est = CNNClassifier(max_iter=1, random_state=0)
    n = 64 * 40
    health = explain.TrainingHealth(every=1)  # measure every batch, to time it
    start = time.perf_counter()
    est.fit(ds.x_train[:n], ds.y_train[:n])
    per_batch = 1e3 * (time.perf_counter() - start) / 40
    health.set_model(est.model_)
    logs = {"epoch": 0, "batch": 1, "batches": 1}
    health.on_batch_end(0, logs)

    def measure() -> None:
        health.on_batch_end(0, logs)

    return timed(measure, repeats)[0], per_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    cnn, mlp = store.load_model("default-cnn"), store.load_model("default-mlp")
    models = {"cnn": cnn, "mlp": mlp}
    image = drawn_seven()
    settings = {"shift": (3, -2), "rotate": 15, "scale": 1.1, "thicken": 1}

    def inspect() -> None:
        explain.activations(cnn, image)
        explain.saliency(cnn, image)
        explain.probe(models, image, **settings)

    parts = {
        "inspect (activations + saliency + probe)": inspect,
        "  activations, default CNN": lambda: explain.activations(cnn, image),
        "  saliency, default CNN": lambda: explain.saliency(cnn, image),
        "  probe update, CNN + MLP": lambda: explain.probe(models, image, **settings),
        "occlusion, default CNN (4x4 patches, stride 2)": lambda: explain.occlusion(
            cnn, image
        ),
        "occlusion, default MLP": lambda: explain.occlusion(mlp, image),
        "shift sweep, 17 shifts, CNN + MLP": lambda: explain.sweep(
            models, image, "shift_x", range(-8, 9), 7
        ),
        "gradient check of the default CNN's architecture": lambda: (
            explain.gradient_check(cnn)
        ),
    }
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    print("| what | median ms | p90 ms |\n|---|---|---|")
    for name, fn in parts.items():
        n = 3 if "gradient check" in name else args.repeats
        median, p90 = timed(fn, n)
        print(f"| {name} | {median:.1f} | {p90:.1f} |")
    with blas_threads(None):
        cost, batch = health_overhead(args.repeats)
    print(
        f"\ntraining health: {cost:.2f} ms per measurement, a training batch of 64 "
        f"takes {batch:.0f} ms; one measurement every {explain.HEALTH_EVERY} "
        f"batches adds {100 * cost / (explain.HEALTH_EVERY * batch):.2f}%"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
