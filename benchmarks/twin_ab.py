"""Thread against process for the second half of each batch, A/B in one process.

One engine trainer alternates blocks of 20 training steps (batch 64, real MNIST) on
the thread path and on the process path (digits/engine/twin.py), so both see the
same machine at the same time; it reports each path's 10th percentile, median and
mean step time and the machine's steal share while each ran.

    DIGITS_DATA_DIR=../shared/data python benchmarks/twin_ab.py --steps 600
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return fields[7], sum(fields)


def main() -> None:
    from digits.data import load_dataset
    from digits.engine.system import blas_threads
    from digits.engine.trainer import Trainer
    from digits.estimator import CNNClassifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    data, n = load_dataset("mnist"), 19200
    x, y = data.x_train[:n], data.y_train[:n]
    est = CNNClassifier(max_iter=1, random_state=0).fit(x[:640], y[:640])
    y_idx, x2 = np.searchsorted(est.classes_, y), x.reshape(n, -1)
    trainer = Trainer(
        est.model_,
        est.optimizer_,
        batch_size=64,
        alpha=est.alpha,
        prepare=est._preparer(),
        rng=np.random.default_rng(0),
        twin="process",
    )
    twin = trainer._twin_for(x2)
    order = np.random.default_rng(1).permutation(n)
    times = {"thread": [], "process": []}
    steal = {"thread": [0, 0], "process": [0, 0]}
    with ThreadPoolExecutor(1) as pool, blas_threads(1):
        for b in range(args.steps):
            mode = "thread" if (b // 20) % 2 == 0 else "process"
            # The trainer's arrays stay in shared memory; the thread path runs on
            # them as well as on its own.
            trainer._twin, trainer._pool = (
                (None, pool) if mode == "thread" else (twin, None)
            )
            idx = order[(b * 64) % (n - 64) :][:64]
            (s0, t0), start = _ticks(), time.perf_counter()
            trainer.train_batch(trainer.prepare(x2[idx], None), y_idx[idx], 0, b)
            times[mode].append(time.perf_counter() - start)
            s1, t1 = _ticks()
            steal[mode][0] += s1 - s0
            steal[mode][1] += t1 - t0
    trainer._twin = twin
    trainer.close()
    for mode, v in times.items():
        ms = np.array(v) * 1e3
        share = steal[mode][0] / max(1, steal[mode][1])
        print(
            f"{mode:8s} p10 {np.percentile(ms, 10):6.2f}  median {np.median(ms):6.2f}"
            f"  mean {ms.mean():6.2f} ms/step  (steal {share:.0%})"
        )
    ratio = np.median(times["thread"]) / np.median(times["process"])
    print(f"thread median / process median: {ratio:.2f}")


if __name__ == "__main__":
    main()
