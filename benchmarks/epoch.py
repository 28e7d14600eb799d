"""One full MNIST epoch of the default CNN: wall time and peak memory.

Targets on the 2-core machine: at most 20 s per epoch, at most 1 GB peak RSS.

    DIGITS_DATA_DIR=../shared/data python benchmarks/epoch.py --repeats 3

Each repeat runs in a fresh process so that peak RSS is that of one training run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one_epoch() -> dict:
    from digits.data import load_dataset
    from digits.estimator import CNNClassifier

    data = load_dataset("mnist")
    est = CNNClassifier(max_iter=1, random_state=0)
    start = time.perf_counter()
    est.fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - start
    return {
        "epoch_seconds": seconds,
        "images_per_second": len(data.x_train) / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "test_accuracy_after_1_epoch": est.score(data.x_test, data.y_test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_epoch()))
        return
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    results = []
    for i in range(args.repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--child"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"run {i + 1}: {r['epoch_seconds']:.1f} s/epoch, "
            f"{r['images_per_second']:.0f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"test accuracy after 1 epoch {r['test_accuracy_after_1_epoch']:.4f}",
            flush=True,
        )
    for key in ("epoch_seconds", "peak_rss_mb"):
        print(f"median {key}: {statistics.median(r[key] for r in results):.1f}")


if __name__ == "__main__":
    main()
