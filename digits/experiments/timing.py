"""How a sweep's trials share this machine, and how long they should take.

On one machine trials run ``n_jobs`` at a time, each limited to
``cores // n_jobs`` threads (the CNN trainer's Python threads and BLAS), so that
two trials on two cores never fight over them; a single trial runs alone with
two threads. ``estimate`` times a few batches of each configuration
(``digits.calibrate``) and schedules the trials the way ``run_sweep`` dispatches
them, before anything trains.

Left out: the estimate assumes the machine is otherwise idle, as when it was
measured; other processes competing for the cores slow the sweep down by as much.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from digits import calibrate, data
from digits.engine.system import blas_threads
from digits.experiments.planning import Sweep
from digits.training import validation_images

# Costs the per-batch probe does not see, as seen on the 2-core machine (see
# benchmarks/README.md, "Sweeps"): starting the loky workers (spawn, imports, the
# dataset's memory map), and per trial the test-set report and saving the run.
WORKER_START_SECONDS = 2.5
TRIAL_OVERHEAD_SECONDS = 0.6
MAX_THREADS_PER_TRIAL = 2  # the CNN trainer runs at most two threads
# Kinds whose estimator takes n_threads (the NumPy trainer's Python threads).
THREADED_KINDS = ("cnn", "dense")


def default_n_jobs(n_trials: int) -> int:
    """Trials at once on this machine: one per core (one thread each), at most
    ``n_trials``; a single trial runs alone with two threads."""
    return max(1, min(n_trials, os.cpu_count() or 1))


def threads_per_trial(n_jobs: int) -> int:
    """Threads each of ``n_jobs`` parallel trials may use without oversubscribing."""
    return max(1, min(MAX_THREADS_PER_TRIAL, (os.cpu_count() or 1) // n_jobs))


def with_threads(kind: str, params: Mapping, threads: int) -> dict:
    return {**params, "n_threads": threads} if kind in THREADED_KINDS else dict(params)


@dataclass(frozen=True)
class Estimate:
    """How long a sweep should take on this machine."""

    seconds: float  # wall-clock for the trials still to run, in parallel
    trial_seconds: dict[str, float]  # trial key -> seconds alone (with its threads)
    n_jobs: int
    threads: int
    n_params: dict[str, int]  # trial key -> parameters
    n_todo: int  # trials still to run


def _schedule(durations: Sequence[float], n_jobs: int) -> float:
    """Wall-clock time of running ``durations`` in order on ``n_jobs`` workers,
    each task going to the first worker free (as joblib dispatches them)."""
    free = [0.0] * max(1, n_jobs)
    for d in durations:
        i = int(np.argmin(free))
        free[i] += d
    return max(free, default=0.0)


def estimate(
    sweep: Sweep, ds, n_jobs: int | None = None, *, skip: Iterable[str] = ()
) -> Estimate:
    """Estimated time of ``sweep`` on ``ds`` with ``n_jobs`` parallel trials.

    Each configuration is timed on a few batches by ``digits.calibrate`` with the
    thread count its trial will use; a trial is its epochs (training plus the
    validation images) plus scoring the test set and saving. The trials, longest
    first as ``run_sweep`` dispatches them, are then scheduled on ``n_jobs``
    workers. ``skip``: keys of trials already done.
    """
    skip = set(skip)
    todo = [t for t in sweep.trials if t.key not in skip]
    n_jobs = n_jobs or default_n_jobs(len(todo))
    threads = threads_per_trial(n_jobs)
    shape, k = tuple(ds.x_train.shape[1:]), len(ds.class_names)
    pool = len(data.validation_split(ds).train)  # the rest validate
    n_train = min(sweep.train_size or pool, pool)
    n_validation = validation_images(ds)
    seconds: dict[str, float] = {}
    n_params: dict[str, int] = {}
    for trial in sweep.trials:
        params = with_threads(sweep.kind, trial.params, threads)
        with blas_threads(1 if threads == 1 else None):
            cal = calibrate.calibrate(sweep.kind, params, shape, k)
            epoch = calibrate.estimate_epoch_seconds(
                sweep.kind,
                params,
                n_train,
                n_validation=n_validation,
                image_shape=shape,
                n_classes=k,
            )
        n_params[trial.key] = cal.n_params
        seconds[trial.key] = (
            sweep.epochs * epoch
            + len(ds.x_test) * cal.predict_seconds_per_image
            + TRIAL_OVERHEAD_SECONDS
        )
    durations = sorted((seconds[t.key] for t in todo), reverse=True)
    total = _schedule(durations, n_jobs)
    if todo and n_jobs > 1:
        total += WORKER_START_SECONDS
    return Estimate(total, seconds, n_jobs, threads, n_params, len(todo))
