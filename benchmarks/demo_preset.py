"""The demo preset against one epoch of the default CNN: training time and accuracy.

Target (issue 19): the ``demo`` preset reaches at least 99.0% on the MNIST test set
in no more training time than one epoch of the ``default`` preset takes, on the same
machine in the same session.

    DIGITS_DATA_DIR=../shared/data python benchmarks/demo_preset.py --repeats 3

Each run is ``digits train`` in a fresh process, as a learner would start it:

    digits train --model cnn --dataset mnist --preset demo
    digits train --model cnn --dataset mnist --preset default --epochs 1

Both train on the same 55,000 MNIST training images and score the 5,000 held-out
validation images after each epoch (so both times include that scoring). The time
is each run's ``train_seconds`` from its metadata; the test accuracy is scored once,
after training. The two alternate who goes first, so that drift in the machine's
load hits both; runs are saved in a temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The CLI arguments of each side, after `digits train --model cnn --dataset mnist`.
SIDES = {
    "demo": ["--preset", "demo"],
    "default, 1 epoch": ["--preset", "default", "--epochs", "1"],
}
TARGET_ACCURACY = 0.99


def train(side: str, runs: Path, index: int) -> dict:
    """One ``digits train`` run of ``side`` in a fresh process; its JSON result."""
    command = [sys.executable, "-m", "digits", "train", "--model", "cnn"]
    command += ["--dataset", "mnist", *SIDES[side], "--json"]
    command += ["--name", f"{side.split(',')[0]}-{index}"]
    env = dict(os.environ, DIGITS_RUNS_DIR=str(runs), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, env=env, cwd=ROOT
    )
    return json.loads(out.stdout)


def load_average() -> str:
    """The machine's 1-, 5- and 15-minute load averages, as text."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    print(f"load average at the start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="demo-preset-") as runs:
        for i in range(args.repeats):
            order = list(SIDES) if i % 2 == 0 else list(SIDES)[::-1]
            for side in order:
                r = train(side, Path(runs), i)
                results[side].append(r)
                print(
                    f"repeat {i + 1} {side:16s}: {r['train_seconds']:5.1f} s, "
                    f"{r['epochs']} epoch(s), validation {r['val_accuracy']:.2%}, "
                    f"test {r['test_accuracy']:.2%} (load average {load_average()})",
                    flush=True,
                )
    demo, default = results["demo"], results["default, 1 epoch"]
    for side, rows in results.items():
        seconds = statistics.median(r["train_seconds"] for r in rows)
        accuracy = statistics.median(r["test_accuracy"] for r in rows)
        print(f"{side:16s} median {seconds:.1f} s, test accuracy {accuracy:.2%}")
    ratios = [
        d["train_seconds"] / e["train_seconds"]
        for d, e in zip(demo, default, strict=True)
    ]
    print(
        "demo time / one default epoch, per repeat: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median {statistics.median(ratios):.2f}"
    )
    reached = sum(r["test_accuracy"] >= TARGET_ACCURACY for r in demo)
    print(f"demo runs at or above {TARGET_ACCURACY:.0%}: {reached} of {len(demo)}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
