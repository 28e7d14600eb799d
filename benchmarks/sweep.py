"""A sweep's estimated time against its actual time, on this machine.

The issue's sweep: 5 depths (conv channels (), (16,), (32,), (32, 64),
(32, 64, 128), 5x5 kernels with 'same' padding so that three blocks fit, then a
dense layer of 100) x 2 seeds, 1 epoch on a 10,000-image MNIST subset. The sweep
is estimated the way the Experiments page does it (``experiments.estimate``:
a few timed batches per configuration), then run, once with 2 trials at a time
(1 thread each) and once with 1 trial at a time (2 threads), in alternating order
over the repeats. Each sweep runs in a fresh runs dir, so nothing is skipped.

    DIGITS_DATA_DIR=../shared/data python benchmarks/sweep.py --repeats 1

Target: the actual time within ±30% of the estimate. Prints one JSON line per
sweep and a summary; note the load average it prints, since another process on
the cores slows the sweep without the estimate knowing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

GRID = {
    "conv_channels": [(), (16,), (32,), (32, 64), (32, 64, 128)],
    "hidden_layer_sizes": [(100,)],
}
PARAMS = {"max_iter": 1, "padding": "same"}
TRAIN_SIZE = 10_000
SEEDS = (0, 1)


def one_sweep(ds, n_jobs: int) -> dict:
    from digits import experiments, store

    with tempfile.TemporaryDirectory() as root:
        os.environ[store.RUNS_DIR_ENV] = root
        sweep = experiments.plan(
            "cnn",
            GRID,
            dataset="mnist",
            seeds=SEEDS,
            train_size=TRAIN_SIZE,
            params=PARAMS,
            name=f"bench-{n_jobs}",
        )
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        estimate = experiments.estimate(sweep, ds, n_jobs)
        estimate_seconds = time.perf_counter() - start
        outcome = experiments.run_sweep(
            sweep, ds, n_jobs=n_jobs, plan_estimate=estimate
        )
        assert outcome.ran == len(sweep.trials), outcome
        per_trial = {
            r["label"]: round(r["seconds"], 1) for r in outcome.rows if r["seed"] == 0
        }
        estimated = {
            t.label: round(estimate.trial_seconds[t.key], 1)
            for t in sweep.trials
            if t.seed == 0
        }
        return {
            "n_jobs": n_jobs,
            "threads": estimate.threads,
            "estimate_s": round(estimate.seconds, 1),
            "actual_s": round(outcome.seconds, 1),
            "actual/estimate": round(outcome.seconds / estimate.seconds, 2),
            "timing_the_estimate_s": round(estimate_seconds, 1),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "trial_s_estimated_seed0": estimated,
            "trial_s_actual_seed0": per_trial,
            "accuracy": {r["label"]: r["test_accuracy"] for r in outcome.rows},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    from digits.data import load_dataset

    ds = load_dataset("mnist")
    results = []
    for repeat in range(args.repeats):
        order = args.n_jobs if repeat % 2 == 0 else args.n_jobs[::-1]
        for n_jobs in order:
            result = one_sweep(ds, n_jobs)
            results.append(result)
            print(json.dumps(result), flush=True)
    for r in results:
        within = abs(r["actual/estimate"] - 1) <= 0.3
        print(
            f"n_jobs={r['n_jobs']} x {r['threads']} thread(s): estimate "
            f"{r['estimate_s']} s, actual {r['actual_s']} s, ratio "
            f"{r['actual/estimate']} ({'within' if within else 'OUTSIDE'} ±30%), "
            f"load {r['load_before']} -> {r['load_after']}"
        )


if __name__ == "__main__":
    main()
