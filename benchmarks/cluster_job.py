"""What a training job costs on a Dask cluster against training here, side by side.

    DIGITS_DATA_DIR=../shared/data python benchmarks/cluster_job.py [--repeats 5]

Starts a LocalCluster on 127.0.0.1 (one worker process, one thread), then for
each repeat trains the same small CNN job (the `quick` preset on 5,000 images,
2 epochs) here and on the worker, alternating, and stops one more job of each
kind mid-run. Reports medians of:

- the job's wall time from start() to done, and the training time its run
  records (the worker's, for a remote job);
- how long after stop() the job's training ended, as seen from this process
  (the remote figure includes the worker's report of it);
- the gap between progress updates seen here while the job ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from distributed import LocalCluster

from digits import cluster, data, registry, store
from digits.training_job import TrainingJob

PARAMS = {**registry.get("cnn").presets["quick"], "max_iter": 2}
TRAIN_SIZE = 5000


def timed_job(ds, remote: str | None) -> dict:
    """Train one job to the end; its wall time, training time and update gaps."""
    _where(remote)
    job = TrainingJob("cnn", ds, PARAMS, train_size=TRAIN_SIZE)
    started = time.perf_counter()
    job.start()
    gaps, last, fraction = [], None, 0.0
    while not job.join(0.01):
        now, snap = time.perf_counter(), job.snapshot()
        if snap.fraction != fraction:
            if last is not None:
                gaps.append(now - last)
            last, fraction = now, snap.fraction
    wall = time.perf_counter() - started
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    return {
        "wall": wall,
        "train": snap.run.meta["train_seconds"],
        "gap": statistics.median(gaps) if gaps else float("nan"),
    }


def stop_latency(ds, remote: str | None) -> float:
    """Seconds from stop() until the job's training has ended, seen from here."""
    _where(remote)
    job = TrainingJob("cnn", ds, {**PARAMS, "max_iter": 50}, train_size=TRAIN_SIZE)
    job.start()
    while job.snapshot().fraction < 0.02:
        time.sleep(0.01)
    asked = time.perf_counter()
    job.stop()
    while job.snapshot().status not in ("saving", "stopped"):
        time.sleep(0.005)
    ended = time.perf_counter() - asked
    job.join()
    return ended


def _where(remote: str | None) -> None:
    if remote:
        os.environ[cluster.SCHEDULER_ENV] = remote
    else:
        os.environ.pop(cluster.SCHEDULER_ENV, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ[store.RUNS_DIR_ENV] = tempfile.mkdtemp(prefix="digits-bench-")
    ds = data.load_dataset("mnist")
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as local:
        where = {"here": None, "cluster": local.scheduler_address}
        rows = {name: [] for name in where}
        stops = {name: [] for name in where}
        timed_job(ds, where["cluster"])  # the dataset's first trip to the worker
        for _ in range(args.repeats):
            for name, remote in where.items():
                rows[name].append(timed_job(ds, remote))
                stops[name].append(stop_latency(ds, remote))
    load = os.getloadavg()[0]
    print(f"{args.repeats} repeats, load average {load:.1f}, median of each:\n")
    print("| where | job wall time | training time | progress every | stop latency |")
    print("|---|---|---|---|---|")
    for name in where:
        med = {k: statistics.median(r[k] for r in rows[name]) for k in rows[name][0]}
        print(
            f"| {name} | {med['wall']:.2f} s | {med['train']:.2f} s | "
            f"{med['gap']:.2f} s | {statistics.median(stops[name]):.2f} s |"
        )


if __name__ == "__main__":
    main()
