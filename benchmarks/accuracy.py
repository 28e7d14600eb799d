"""MNIST test accuracy of the engine's reference configurations, with training time.

| model | target |
|---|---|
| default CNN, 3 epochs | >= 99.2% |
| CNNClassifier(conv_channels=(), hidden_layer_sizes=(30,)) | >= 95% |
| CNN with augment and more epochs | >= 99.5% |

    DIGITS_DATA_DIR=../shared/data python benchmarks/accuracy.py --seeds 0 1
    ... --trainer plain      # the lesson's plain loop instead of the engine
"""

from __future__ import annotations

import argparse
import time

from digits.data import load_dataset
from digits.estimator import CNNClassifier

CONFIGS = {
    "default-cnn-3-epochs": {},
    "ann-30": {"conv_channels": (), "hidden_layer_sizes": (30,), "max_iter": 20},
    "cnn-augment-15-epochs": {"augment": True, "max_iter": 15},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--trainer", choices=["engine", "plain"], default="engine")
    args = parser.parse_args()
    data = load_dataset("mnist")
    for name in args.only or CONFIGS:
        for seed in args.seeds:
            est = CNNClassifier(
                random_state=seed, trainer=args.trainer, **CONFIGS[name]
            )
            start = time.perf_counter()
            est.fit(data.x_train, data.y_train)
            seconds = time.perf_counter() - start
            acc = est.score(data.x_test, data.y_test)
            print(
                f"{name:24s} {args.trainer} seed {seed}: test accuracy {acc:.4f} "
                f"in {seconds:.0f} s ({est.n_iter_} epochs)",
                flush=True,
            )


if __name__ == "__main__":
    main()
