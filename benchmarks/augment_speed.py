"""Training speed of the default CNN with each augmentation, side by side.

Trains one epoch on the same N MNIST training images with ``augment`` False, True
("shift") and "writers", in turn, ``--repeats`` times, and prints the images per
second of each (the median over the repeats) and the cost against none. Also
times each augmentation alone on 64-image batches, the trainer's batch size. The
machines are shared: only figures from one run compare.

    DIGITS_DATA_DIR=../shared/data python benchmarks/augment_speed.py --n 10000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# This checkout's digits, not another one pip may have installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digits import augment
from digits.data import load_dataset
from digits.estimator import CNNClassifier

MODES = {"none": False, "shift": True, "writers": "writers"}
BATCH = 64


def alone(images: np.ndarray) -> dict[str, float]:
    """Microseconds per image of each augmentation by itself, on 64-image batches.

    images : (N, 28, 28) float32 in [0, 1].
    """
    rng = np.random.default_rng(0)
    times = {}
    for name, style in augment.STYLES.items():
        start = time.perf_counter()
        for i in range(0, len(images) - BATCH + 1, BATCH):
            style(images[i : i + BATCH], rng)
        times[name] = 1e6 * (time.perf_counter() - start) / len(images)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="training images")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    mnist = load_dataset("mnist")
    x, y = mnist.x_train[: args.n], mnist.y_train[: args.n]

    speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        for mode, value in MODES.items():
            model = CNNClassifier(max_iter=1, augment=value, random_state=repeat)
            model.fit(x, y)
            speeds[mode].append(model.history_[-1]["images_per_second"])
            print(f"{mode}: {speeds[mode][-1]:,.0f} images/s", file=sys.stderr)

    base = float(np.median(speeds["none"]))
    print(f"| augment | images/s (median of {args.repeats}) | time per image |")
    print("|---|---|---|")
    for mode in MODES:
        speed = float(np.median(speeds[mode]))
        print(f"| {mode} | {speed:,.0f} | {100 * (base / speed - 1):+.1f}% |")
    small = x[:6400].reshape(-1, 28, 28).astype(np.float32) / 255
    print()
    for name, us in alone(small).items():
        print(f"{name} alone: {us:.0f} µs per image")


if __name__ == "__main__":
    main()
