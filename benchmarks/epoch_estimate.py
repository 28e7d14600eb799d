"""How close the Train page's "time per epoch" comes to the epochs it then runs.

Before training, the page shows an estimate from a short probe
(``digits.calibrate.estimate_epoch_seconds``); once training runs, the estimate
is corrected from the real batches (``digits.calibrate.EpochClock``). Target: both
within 25% of the measured mean epoch (training plus validation, as the page's
job runs it). Each configuration runs in a fresh process, so the probe's cache
and the first-call costs are those a new server pays.

    DIGITS_DATA_DIR=../shared/data python benchmarks/epoch_estimate.py
    ... --only quick-cnn-20000   # one configuration

Reported per configuration: the probe's estimate, the corrected estimate after
the first ``EpochClock`` reading (a few batches in), after the first epoch, the
measured mean epoch, and each estimate's error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time

# name -> (kind, preset, overrides, training images, epochs)
CONFIGS = {
    "quick-cnn-5000": ("cnn", "quick", {}, 5000, 3),
    "quick-cnn-20000": ("cnn", "quick", {}, 20_000, 5),
    "default-cnn-20000": ("cnn", "default", {}, 20_000, 2),
    "quick-dense-20000": ("dense", "quick", {}, 20_000, 3),
    "quick-mlp-20000": ("mlp", "quick", {}, 20_000, 3),
}


def measure(name: str) -> dict:
    """One configuration, in this process: estimate, then train as the page does."""
    from digits import calibrate, data, registry, training
    from digits.nn.callbacks import Callback

    kind, preset, overrides, n_train, epochs = CONFIGS[name]
    ds = data.load_dataset("mnist")

    params = registry.get(kind).params(preset, **{**overrides, "max_iter": epochs})
    n_val = training.validation_images(ds)
    start = time.perf_counter()
    probe = calibrate.estimate_epoch_seconds(
        kind,
        params,
        n_train,
        n_validation=n_val,
        image_shape=ds.x_train.shape[1:],
        n_classes=10,
    )
    probe_seconds = time.perf_counter() - start
    clock = calibrate.epoch_clock(
        kind,
        params,
        n_train,
        n_validation=n_val,
        image_shape=ds.x_train.shape[1:],
        n_classes=10,
    )

    class Watch(Callback):
        def __init__(self):
            super().__init__()
            self.first = None  # the first corrected estimate
            self.after_epoch = None
            self.ends = []

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_batch_end(self, step, logs):
            if self.first is None and clock.corrected:
                self.first = (clock.seconds, logs["batch"], logs["batches"])

        def on_epoch_end(self, epoch, logs):
            self.ends.append(time.perf_counter())
            if self.after_epoch is None:
                self.after_epoch = clock.seconds

    watch = Watch()
    training.train_run(
        kind,
        ds,
        params=params,
        callbacks=[clock, watch],
        train_size=n_train,
        validation_size=training.VALIDATION_SIZE,
        name=f"bench-estimate-{name}",
        overwrite=True,
        out=f"/tmp/bench-estimate-{name}",
    )
    edges = [watch.begin, *watch.ends]
    per_epoch = [b - a for a, b in itertools.pairwise(edges)]
    actual = sum(per_epoch) / len(per_epoch)
    return {
        "name": name,
        "probe": probe,
        "probe_seconds": probe_seconds,
        "first": watch.first[0],
        "first_after": f"{watch.first[1]}/{watch.first[2]} batches",
        "after_epoch": watch.after_epoch,
        "actual": actual,
        "epochs": per_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(CONFIGS), action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    for name in args.only or CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        "| configuration | probe estimate | corrected (after) | after epoch 1 | "
        "measured epoch | errors: probe, corrected, epoch 1 |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        a = r["actual"]
        errors = ", ".join(
            f"{v / a - 1:+.0%}" for v in (r["probe"], r["first"], r["after_epoch"])
        )
        print(
            f"| {r['name']} | {r['probe']:.2f} s (probe took "
            f"{r['probe_seconds']:.1f} s) | {r['first']:.2f} s ({r['first_after']}) "
            f"| {r['after_epoch']:.2f} s | {a:.2f} s | {errors} |"
        )


if __name__ == "__main__":
    main()
