"""Training and inference throughput: the NumPy CNN against PyTorch on the CPU.

Both sides run the identical network (conv 5x5 1->32, pool, ReLU, conv 5x5 32->64,
pool, ReLU, dense 1024->128, ReLU, dropout 0.25, dense 128->10), float32, Adam
(lr 1e-3), batch 128, on the same real MNIST images in the same batch order. PyTorch
runs at its default settings (NCHW, its default thread count). Each measurement runs
in a fresh process, the two sides alternate, and the report gives each pair's ratio
and the median.

    pip install torch==2.13.0          # benchmark-only; digits never imports torch
    DIGITS_DATA_DIR=../shared/data python benchmarks/train_speed.py --pairs 5

One process: ``--side numpy|torch|plain`` prints a JSON line with its throughputs.
``--plain`` adds a third side to every pair: the same NumPy network trained by the
lesson's plain loop (``CNNClassifier(trainer="plain")``, ``digits.nn.training``)
instead of the engine, with BLAS at its default threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 128
WHAT = ("train", "infer")
WARMUP_BATCHES = 20


def batches(n_batches: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST train images in one fixed random order, and the 10k test images."""
    from digits.data import load_dataset

    data = load_dataset("mnist")
    order = np.random.default_rng(seed).permutation(len(data.x_train))
    order = order[: (WARMUP_BATCHES + n_batches) * BATCH]
    return data.x_train[order], data.y_train[order], np.asarray(data.x_test)


def run_numpy(x, y, x_test, n_batches: int, trainer: str = "engine") -> dict:
    from digits.estimator import CNNClassifier

    est = CNNClassifier(
        trainer=trainer,
        batch_size=BATCH,
        learning_rate="constant",
        learning_rate_init=1e-3,
        shuffle=False,
        random_state=0,
    )
    warm = WARMUP_BATCHES * BATCH
    est.partial_fit(x[:warm], y[:warm], classes=np.arange(10))
    start = time.perf_counter()
    est.partial_fit(x[warm:], y[warm:])
    train = n_batches * BATCH / (time.perf_counter() - start)
    est.predict_proba(x_test[:1000])
    start = time.perf_counter()
    est.predict_proba(x_test)
    infer = len(x_test) / (time.perf_counter() - start)
    return {"train_images_per_second": train, "infer_images_per_second": infer}


def run_torch(x, y, x_test, n_batches: int) -> dict:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(1024, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))

    def step(i: int) -> None:
        xb = xt[i * BATCH : (i + 1) * BATCH].unsqueeze(1).float().div_(255)
        opt.zero_grad()
        loss_fn(model(xb), yt[i * BATCH : (i + 1) * BATCH]).backward()
        opt.step()

    model.train()
    for i in range(WARMUP_BATCHES):
        step(i)
    start = time.perf_counter()
    for i in range(WARMUP_BATCHES, WARMUP_BATCHES + n_batches):
        step(i)
    train = n_batches * BATCH / (time.perf_counter() - start)
    model.eval()
    xtest = torch.from_numpy(np.array(x_test))

    def infer() -> None:
        with torch.no_grad():
            for s in range(0, len(xtest), 256):
                model(xtest[s : s + 256].unsqueeze(1).float().div_(255)).softmax(1)

    infer()
    start = time.perf_counter()
    infer()
    return {
        "train_images_per_second": train,
        "infer_images_per_second": len(x_test) / (time.perf_counter() - start),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["numpy", "torch", "plain"])
    parser.add_argument("--plain", action="store_true", help="measure the plain loop")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.side:
        data = batches(args.batches, args.seed)
        if args.side == "torch":
            print(json.dumps(run_torch(*data, args.batches)))
        else:
            trainer = "plain" if args.side == "plain" else "engine"
            print(json.dumps(run_numpy(*data, args.batches, trainer)))
        return

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    rows = []
    for pair in range(args.pairs):
        result = {}
        # Alternate who goes first, so drift in machine load hits both sides.
        sides = ["numpy", "torch"] if pair % 2 == 0 else ["torch", "numpy"]
        sides += ["plain"] if args.plain else []
        for side in sides:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--side",
                    side,
                    "--batches",
                    str(args.batches),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            result[side] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(result)
        n, t = result["numpy"], result["torch"]
        line = " | ".join(_compare(n, t, w) for w in WHAT)
        if args.plain:
            p = result["plain"]
            line += " | plain loop " + ", ".join(
                f"{w} {p[f'{w}_images_per_second']:.0f}" for w in WHAT
            )
        print(f"pair {pair + 1}: {line}", flush=True)
    for what in WHAT:
        key = f"{what}_images_per_second"
        ratios = [r["numpy"][key] / r["torch"][key] for r in rows]
        numpy_median = statistics.median(r["numpy"][key] for r in rows)
        torch_median = statistics.median(r["torch"][key] for r in rows)
        print(
            f"{what}: median numpy {numpy_median:.0f} img/s, median torch "
            f"{torch_median:.0f} img/s, median ratio {statistics.median(ratios):.2f} "
            f"(pairs: {', '.join(f'{x:.2f}' for x in ratios)})"
        )
        if args.plain:
            plain = statistics.median(r["plain"][key] for r in rows)
            print(
                f"{what}: median plain loop {plain:.0f} img/s, "
                f"{numpy_median / plain:.2f}x slower than the engine"
            )


def _compare(numpy_side: dict, torch_side: dict, what: str) -> str:
    key = f"{what}_images_per_second"
    a, b = numpy_side[key], torch_side[key]
    return f"{what} numpy {a:6.0f} torch {b:6.0f} img/s ratio {a / b:.2f}"


if __name__ == "__main__":
    main()
