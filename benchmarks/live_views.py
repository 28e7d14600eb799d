"""What the Train page's views inside the network cost training (issue 19).

A ``TrainingJob`` takes them every ``LIVE_SECONDS`` between two batches (the
first conv layer's kernels copied, one probe image through a replica of the
network) and after each epoch (the validation images still wrong, from guesses
the validation pass makes anyway). This trains the same job with them on and off,
each in a fresh process, alternating which goes first, and reports training
images/s (the mean of the epochs' own rates, which leave out validation and
saving) side by side, each pair's slowdown and the median.

    DIGITS_DATA_DIR=../shared/data python benchmarks/live_views.py --pairs 3

One process: ``--side on|off`` prints a JSON line with its rate. ``--look``
times one look alone (the filters and the probe through the default CNN, the
median of 20), which a loaded machine measures far more steadily than the
difference of two training rates: its share of training is that time divided by
``LIVE_SECONDS``.
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
sys.path.insert(0, str(ROOT))  # this checkout's digits, not an installed one


def one_side(live: bool, preset: str, train_size: int, epochs: int) -> dict:
    from digits import registry
    from digits.data import load_dataset
    from digits.training_job import TrainingJob

    ds = load_dataset("mnist")
    params = registry.get("cnn").params(preset, max_iter=epochs, random_state=0)
    job = TrainingJob("cnn", ds, params, train_size=train_size, live=live).start()
    job.join()
    snap = job.snapshot()
    if snap.status != "done":
        raise SystemExit(f"the job ended {snap.status}: {snap.error}")
    rates = [e["images_per_second"] for e in snap.epochs]
    looks = snap.live.at if snap.live is not None else None
    return {"live": live, "images_per_second": statistics.mean(rates), "at": looks}


def one_look(preset: str, repeats: int = 20) -> float:
    """Seconds of one look inside a partly trained ``preset`` CNN (median)."""
    import time

    import numpy as np

    from digits import registry
    from digits.data import load_dataset
    from digits.training_job import TrainingJob

    ds = load_dataset("mnist")
    params = registry.get("cnn").params(preset, random_state=0)
    job = TrainingJob("cnn", ds, params, train_size=1000)
    est = registry.get("cnn").build(preset, random_state=0)
    est.partial_fit(ds.x_train[:640], ds.y_train[:640], classes=np.arange(10))
    watcher = job._watcher  # the job's own, as it runs between two batches
    watcher.set_estimator(est)
    watcher.set_model(est.model_)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        watcher._look(0.0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--side", choices=("on", "off"))
    parser.add_argument("--look", action="store_true")
    args = parser.parse_args()
    if args.look:
        from digits.training_job import LIVE_SECONDS

        seconds = one_look(args.preset)
        print(
            f"one look inside the {args.preset} CNN: {seconds * 1000:.1f} ms "
            f"(median of 20), every {LIVE_SECONDS:g} s: "
            f"{seconds / LIVE_SECONDS:.2%} of training time"
        )
        return
    if args.side:
        result = one_side(args.side == "on", args.preset, args.train_size, args.epochs)
        print(json.dumps(result))
        return
    slowdowns = []
    for pair in range(args.pairs):
        order = ("on", "off") if pair % 2 == 0 else ("off", "on")
        rate = {}
        for side in order:
            with tempfile.TemporaryDirectory() as runs:
                env = {**os.environ, "DIGITS_RUNS_DIR": runs}
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--side",
                        side,
                        "--preset",
                        args.preset,
                        "--train-size",
                        str(args.train_size),
                        "--epochs",
                        str(args.epochs),
                    ],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            rate[side] = json.loads(out.strip().splitlines()[-1])["images_per_second"]
        slowdown = 1 - rate["on"] / rate["off"]
        slowdowns.append(slowdown)
        print(
            f"pair {pair + 1} ({' then '.join(order)}): with live views "
            f"{rate['on']:,.0f} img/s, without {rate['off']:,.0f} img/s, "
            f"slowdown {slowdown:+.1%}",
            flush=True,
        )
    print(
        f"median slowdown {statistics.median(slowdowns):+.1%} "
        f"(pairs: {', '.join(f'{s:+.1%}' for s in slowdowns)})"
    )


if __name__ == "__main__":
    main()
