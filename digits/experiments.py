"""Sweeps: train a grid of configurations for a few seeds each, and compare them.

    sweep = plan("cnn", {"conv_channels": [(), (16,), (32, 64)]}, dataset="mnist",
                 seeds=(0, 1), train_size=10_000, params={"max_iter": 1})
    estimate(sweep, ds).seconds        # before anything runs
    outcome = run_sweep(sweep, ds)     # trials in parallel; results.csv + runs

A sweep is the product of the grid's values, times the seeds. Each trial is one
``digits.store.train_run`` (a run in the store, named after the sweep, its
configuration and seed) and one row of the sweep's table,
``$DIGITS_RUNS_DIR/.sweeps/<name>/results.csv``: test accuracy and loss, training
time, parameter count, depth, width and the training-loss curve. Each finished
trial is added to the table as soon as it ends, so an interrupted sweep keeps what
finished, and running the same sweep again skips the trials already in it (each
trial has a stable key made of the model kind, dataset, training-set size,
hyperparameters and seed). A sweep's default name is a hash of all its trials'
keys: the same command resumes, any other grid gets a table of its own.

Several processes may run one sweep at once (two terminals, two dashboard
sessions, a terminal and the dashboard). Adding a row takes an exclusive
``flock`` on ``.results.csv.lock`` beside the table, re-reads the table, keeps one
row per trial key and replaces the file atomically (temp file, fsync, rename), so
no row is lost or doubled, and a reader never sees a half-written table. A trial
is trained under a claim (a ``flock`` on ``.claims/<key>.lock``): a process that
finds a trial claimed runs its other trials first, then waits for that one and
takes its row from the table instead of training it again. A table that cannot
be read (not UTF-8, not CSV, no ``key`` column, a row without a key) is refused
with a message before anything trains; one damaged while a sweep runs is kept
aside as ``results.csv.corrupt-<time>`` and a fresh table started with the rows
this process knows.

Parallelism: on one machine trials run in joblib's loky processes, ``n_jobs`` at a
time, each limited to ``cores // n_jobs`` threads (the CNN trainer's Python
threads and BLAS), so that two trials on two cores never fight over them. With
``n_jobs=1`` the trials run one after another in this process with two threads
each. Given a Dask scheduler address, the same trials run on that cluster through
joblib's dask backend, one thread each (start the workers with
``--nthreads 1``); ``dask.distributed`` is imported only then.

Stopping: ``stop`` (a ``threading.Event``) ends the running trials after their
current batch (their half-trained runs are deleted) and skips the rest. Worker
processes learn of it through a file in the sweep's folder (in a folder of each
``run_sweep`` call's own, so that stopping one process's sweep leaves another's
running), which they check between batches; they also report each trial's
progress there. On a cluster
whose workers do not share that folder, stopping cancels the trials not yet
started and the others run to the end, and there is no per-trial progress.

Left out: the estimate assumes the machine is otherwise idle, as when it was
measured (``digits.calibrate``); other processes competing for the cores slow
the sweep down by as much.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digits import calibrate, registry, slots, store
from digits.engine.system import blas_threads
from digits.errors import ConfigError, DataError, DigitsError
from digits.nn.callbacks import Callback

log = logging.getLogger(__name__)

SWEEPS_DIR = ".sweeps"  # under the runs dir; hidden, so never listed as a run
RESULTS_FILE = "results.csv"
LOCK_FILE = ".results.csv.lock"  # beside the table: whoever holds it may rewrite it
CLAIMS_DIR = ".claims"  # <key>.lock, held while a process trains that trial
CORRUPT_SUFFIX = ".corrupt-"  # results.csv.corrupt-<time>: a damaged table kept
CONTROL_DIR = ".control"  # <host>-<pid>-<id>/: a run_sweep call's stop flag, progress
STOP_FILE = "STOP"
# A bigger grid is almost certainly a typo: 200 trials of a small CNN on 10,000
# images take about 3 hours on the 2-core machine.
MAX_TRIALS = 200
MAX_SEED = 2**32 - 1  # scikit-learn's and NumPy's legacy seeds stop here
# 200 trials' rows (with their 50-point curves) take about 0.3 MB; a table a
# hundred times that is not one this program wrote, and is not read whole.
MAX_TABLE_BYTES = 32 * 2**20
CLAIM_POLL_SECONDS = 0.2  # how often a trial claimed elsewhere is checked
VALIDATION_SIZE = 2000  # test images scored after each epoch, as on Train
PROGRESS_SECONDS = 0.5  # how often a trial reports its progress
CURVE_POINTS = 50  # points of each trial's training-loss curve
# Costs the per-batch probe does not see, as seen on the 2-core machine (see
# benchmarks/README.md, "Sweeps"): starting the loky workers (spawn, imports, the
# dataset's memory map), and per trial the test-set report and saving the run.
WORKER_START_SECONDS = 2.5
TRIAL_OVERHEAD_SECONDS = 0.6
CONNECT_SECONDS = 5  # to wait for a Dask scheduler
MAX_THREADS_PER_TRIAL = 2  # the CNN trainer runs at most two threads
# Kinds whose estimator takes n_threads (the NumPy trainer's Python threads).
THREADED_KINDS = ("cnn", "dense")
COLUMNS = (
    "key",
    "sweep",
    "label",
    "seed",
    "status",
    "kind",
    "dataset",
    "train_size",
    "epochs",
    "conv_channels",
    "hidden_layer_sizes",
    "depth",
    "width",
    "n_params",
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "seconds",
    "run",
    "config",
    "params",
    "curve",
    "error",
    "finished",
)
JSON_COLUMNS = ("conv_channels", "hidden_layer_sizes", "config", "params", "curve")
INT_COLUMNS = ("seed", "train_size", "epochs", "depth", "width", "n_params")
FLOAT_COLUMNS = ("test_accuracy", "test_loss", "train_seconds", "seconds")
FINAL = ("done", "stopped", "failed")
INTERNAL_KEYS = ("elsewhere",)  # in a trial's row on its way, never in the table


def sweeps_dir() -> Path:
    """Where sweeps keep their tables: ``<runs dir>/.sweeps``."""
    return store.runs_dir() / SWEEPS_DIR


# -- the grid ---------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One configuration and seed of a sweep."""

    key: str  # stable: kind, dataset, training-set size, hyperparameters, seed
    label: str  # the swept values, e.g. "conv 32-64 · hidden 100"
    config: dict[str, Any]  # the swept hyperparameters' values
    seed: int
    params: dict[str, Any]  # every hyperparameter given to train_run
    run_name: str

    @property
    def depth(self) -> int:
        return depth(self.params)

    @property
    def width(self) -> int:
        return width(self.params)


@dataclass(frozen=True)
class Sweep:
    """A checked grid: what ``plan`` returns and ``run_sweep`` runs."""

    name: str
    kind: str
    dataset: str
    grid: dict[str, tuple]  # hyperparameter -> the values tried
    seeds: tuple[int, ...]
    train_size: int | None
    params: dict[str, Any]  # fixed hyperparameters under the grid
    trials: tuple[Trial, ...]

    @property
    def folder(self) -> Path:
        return sweeps_dir() / self.name

    @property
    def results_path(self) -> Path:
        return self.folder / RESULTS_FILE

    @property
    def epochs(self) -> int:
        """Epochs per trial: the grid's max_iter, else the model kind's default."""
        model = registry.get(self.kind).build(**self.trials[0].params)
        return int(model.get_params()["max_iter"])


def depth(params: Mapping[str, Any]) -> int:
    """Hidden layers with weights: conv blocks plus dense hidden layers."""
    return len(params.get("conv_channels") or ()) + len(
        params.get("hidden_layer_sizes") or ()
    )


def width(params: Mapping[str, Any]) -> int:
    """Units of the widest dense hidden layer (0 without one).

    Conv channels are left out: a grid's depths usually add blocks of more
    channels, so counting them would make width follow depth.
    """
    return max(params.get("hidden_layer_sizes") or (), default=0)


def _short(name: str, value: Any) -> str:
    """A value as a label shows it: (32, 64) -> "32-64", () -> "none"."""
    if isinstance(value, tuple | list):
        return "-".join(map(str, value)) or "none"
    return str(value)


LABEL_NAMES = {"conv_channels": "conv", "hidden_layer_sizes": "hidden"}


def _label(config: Mapping[str, Any]) -> str:
    parts = [f"{LABEL_NAMES.get(k, k)} {_short(k, v)}" for k, v in config.items()]
    return " · ".join(parts) or "base"


def _canonical(value: Any) -> Any:
    """Tuples for layer lists (they arrive as lists from JSON and widgets)."""
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_value(spec: registry.ModelKind, name: str, value: Any) -> None:
    """ConfigError naming ``name`` and ``value`` unless the value is usable."""
    try:
        hp = spec.hyperparameter(name)
    except ConfigError:
        hp = None  # a parameter the dashboard does not offer: the estimator checks
    problem = None
    if hp is None:
        pass
    elif hp.type == "layers":
        if not isinstance(value, tuple) or any(v < 1 for v in value):
            problem = "each layer needs a positive whole number of units/channels"
    elif hp.type == "choice":
        if value not in hp.choices:
            problem = f"choose from {', '.join(map(str, hp.choices))}"
    elif hp.type == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problem = "it must be a whole number, 0 or more"
        elif name != "random_state" and value < 1:
            problem = "it must be 1 or more"
    elif hp.type in ("float", "log"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem = "it must be a number"
        elif not math.isfinite(value) or value < 0 or (hp.type == "log" and value == 0):
            problem = (
                "it must be a finite number above 0"
                if hp.type == "log"
                else ("it must be a finite number, 0 or more")
            )
    if problem:
        raise ConfigError(f"Invalid value {value!r} for {name}: {problem}.")


def _key(kind: str, dataset: str, train_size: int | None, params: Mapping) -> str:
    text = json.dumps(
        store.jsonable(
            {"kind": kind, "dataset": dataset, "train_size": train_size, **params}
        ),
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def plan(
    kind: str,
    grid: Mapping[str, Iterable],
    *,
    dataset: str = "mnist",
    seeds: Sequence[int] = (0,),
    train_size: int | None = None,
    params: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Sweep:
    """Check a grid and list its trials; ConfigError before anything runs.

    grid : hyperparameter -> the values to try, e.g. ``{"conv_channels": [(),
        (32,)], "hidden_layer_sizes": [(100,)]}``; every combination is a
        configuration, trained once per seed (``random_state``).
    params : fixed hyperparameters for every trial (e.g. ``max_iter``).
    name : the sweep's name (sanitised); by default one made from the kind,
        dataset and a hash of every trial's key, so that the same sweep resumes
        where it left off and any other grid (another value, seed, epoch count
        or training-set size) gets a table of its own. Give a name to make a
        grid with more values or seeds add to an earlier table.
    """
    spec = registry.get(kind)
    fixed = {k: _canonical(v) for k, v in dict(params or {}).items()}
    values: dict[str, tuple] = {}
    for hp_name, raw in dict(grid).items():
        if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
            raise ConfigError(
                f"The grid's values for {hp_name} must be a list, got {raw!r}."
            )
        options = tuple(dict.fromkeys(_canonical(v) for v in raw))
        if not options:
            raise ConfigError(
                f"The grid gives no values for {hp_name}; give at least one, or "
                f"leave it out."
            )
        values[hp_name] = options
    if "random_state" in values or "random_state" in fixed:
        raise ConfigError("Seeds are set with seeds=, not as random_state.")
    seeds = _check_seeds(seeds)
    if train_size is not None and train_size < 1:
        raise ConfigError(f"train_size must be at least 1; got {train_size}.")
    n_trials = math.prod(len(v) for v in values.values()) * len(seeds)
    if n_trials > MAX_TRIALS:
        raise ConfigError(
            f"The grid has {n_trials} trials "
            f"({' x '.join(str(len(v)) for v in values.values())} configurations x "
            f"{len(seeds)} seeds); the limit is {MAX_TRIALS}. Try fewer values or "
            f"seeds, or split it into several sweeps."
        )
    # Unknown names fail in spec.params, bad values here: all before any training.
    spec.params(**fixed, **{k: v[0] for k, v in values.items()})
    for hp_name, value in itertools.chain(
        fixed.items(), ((k, v) for k, vs in values.items() for v in vs)
    ):
        _check_value(spec, hp_name, value)
    swept = [k for k, v in values.items() if len(v) > 1]
    planned = []  # (config, seed, every hyperparameter, key)
    for combo in itertools.product(*values.values()):
        config = dict(zip(values, combo, strict=True))
        for seed in seeds:
            hyper = spec.params(**fixed, **config, random_state=seed)
            key = _key(kind, dataset, train_size, hyper)
            planned.append((config, seed, hyper, key))
    if name is None:
        # From every trial's key, so from everything that changes what is trained
        # (kind, dataset, training-set size, every value, seeds, epochs): the same
        # command resumes its own table, and no other grid shares it. Sorted, so
        # that the order values are given in does not matter.
        keys = " ".join(sorted(key for *_, key in planned))
        digest = hashlib.sha256(keys.encode()).hexdigest()[:8]
        name = f"sweep-{kind}-{Path(dataset).stem}-{digest}"
    name = store.sanitize_name(name)
    trials = []
    for config, seed, hyper, key in planned:
        label = _label({k: config[k] for k in swept})
        trials.append(
            Trial(
                key=key,
                label=label,
                config=config,
                seed=seed,
                params=hyper,
                run_name=store.sanitize_name(f"{name}-{label}-s{seed}"),
            )
        )
    return Sweep(
        name=name,
        kind=kind,
        dataset=dataset,
        grid=values,
        seeds=seeds,
        train_size=train_size,
        params=fixed,
        trials=tuple(trials),
    )


def _check_seeds(seeds: Iterable) -> tuple[int, ...]:
    """Seeds as distinct ints in 0..MAX_SEED; ConfigError naming the bad one.

    At most MAX_TRIALS are taken from ``seeds``, so that ``range(10**9)`` is
    refused at once instead of being listed.
    """
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable):
        raise ConfigError(f"Seeds must be a list of whole numbers; got {seeds!r}.")
    taken = list(itertools.islice(seeds, MAX_TRIALS + 1))
    if len(taken) > MAX_TRIALS:
        raise ConfigError(
            f"More than {MAX_TRIALS} seeds; a sweep has at most {MAX_TRIALS} trials."
        )
    checked = []
    for seed in taken:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ConfigError(f"Seed {seed!r} is not a whole number.")
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(
                f"Seeds must be between 0 and {MAX_SEED}; got {int(seed)}."
            )
        checked.append(int(seed))
    unique = tuple(dict.fromkeys(checked))
    if not unique:
        raise ConfigError("A sweep needs at least one seed.")
    return unique


def parse_values(hp: registry.Hyperparameter, text: str) -> list:
    """The grid values of a command-line flag; ConfigError if any is invalid.

    Layer lists are written in parentheses, ``"(),(16,),(32,64)"``, or separated
    by semicolons, ``"30;100;128,64"``; other values by commas or semicolons,
    ``"0.001,0.01"``.
    """
    text = text.strip()
    if hp.type == "layers":
        if "(" in text or ")" in text:
            groups = re.findall(r"\(([^()]*)\)", text)
            rest = re.sub(r"\(([^()]*)\)", "", text)
            if not groups or rest.strip(" ,;"):
                raise ConfigError(
                    f"Cannot read {text!r} as a list of {hp.name}: write each in "
                    f'parentheses, e.g. "(),(16,),(32,64)".'
                )
        else:
            groups = text.split(";")
            if any(not group.strip() for group in groups):
                # An empty flag or ";;" is a slip, not a request for no layers.
                raise ConfigError(
                    f"No value given for {hp.name} in {text!r}: separate layer "
                    f'lists with ";" (e.g. "30;100;128,64"), and write "()" for '
                    f"none."
                )
        return [hp.parse(group) for group in groups]
    parts = [p for p in re.split(r"[;,]", text) if p.strip()]
    if not parts:
        raise ConfigError(f"No values given for {hp.name}.")
    return [hp.parse(p) for p in parts]


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "3" -> (0, 1, 2); "0,5,7" -> (0, 5, 7); ConfigError for anything else.

    A count runs from 1 to MAX_TRIALS; a listed seed from 0 to MAX_SEED, each
    listed once (a repeat would train the same model twice).
    """
    how = "give a count (--seeds 3) or a list (--seeds 0,5,7)"
    parts = [p for p in re.split(r"[;,\s]+", text.strip()) if p]
    if not parts:
        raise ConfigError(f"No seeds given: {how}.")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"Cannot read seeds {text!r}: {how}.") from None
    if len(numbers) == 1:
        count = numbers[0]
        if count < 1:
            raise ConfigError(
                f"The number of seeds must be 1 or more; got {text!r}. To train "
                f"one given seed, list it with another (--seeds 0,5)."
            )
        if count > MAX_TRIALS:
            raise ConfigError(
                f"{count} seeds is more than a sweep's {MAX_TRIALS} trials; give "
                f"fewer (e.g. --seeds 3)."
            )
        return tuple(range(count))
    repeated = [n for n, times in Counter(numbers).items() if times > 1]
    if repeated:
        raise ConfigError(
            f"Seed {repeated[0]} is listed more than once in {text!r}; list each "
            f"seed once."
        )
    return _check_seeds(numbers)


# -- the estimate -----------------------------------------------------------------


def default_n_jobs(n_trials: int) -> int:
    """Trials at once on this machine: one per core (one thread each), at most
    ``n_trials``; a single trial runs alone with two threads."""
    return max(1, min(n_trials, os.cpu_count() or 1))


def threads_per_trial(n_jobs: int) -> int:
    """Threads each of ``n_jobs`` parallel trials may use without oversubscribing."""
    return max(1, min(MAX_THREADS_PER_TRIAL, (os.cpu_count() or 1) // n_jobs))


def _with_threads(kind: str, params: Mapping, threads: int) -> dict:
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
    n_train = min(sweep.train_size or len(ds.x_train), len(ds.x_train))
    n_val = min(VALIDATION_SIZE, len(ds.x_test))
    seconds: dict[str, float] = {}
    n_params: dict[str, int] = {}
    for trial in sweep.trials:
        params = _with_threads(sweep.kind, trial.params, threads)
        with blas_threads(1 if threads == 1 else None):
            cal = calibrate.calibrate(sweep.kind, params, shape, k)
            epoch = calibrate.estimate_epoch_seconds(
                sweep.kind,
                params,
                n_train,
                n_validation=n_val,
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


# -- running ------------------------------------------------------------------------


class _Monitor(Callback):
    """Inside a trial: records the loss curve, reports progress, obeys a stop.

    The stop comes from ``event`` (trials in this process) or from the sweep's
    stop file (worker processes); progress goes to ``progress-<key>`` files.
    """

    def __init__(self, key: str, epochs: int, control: str | None, event=None) -> None:
        self.key, self.epochs = key, epochs
        self.control = Path(control) if control else None
        self.event = event
        self.curve: list[tuple[float, float]] = []
        self._last = 0.0

    def stop_requested(self) -> bool:
        if self.event is not None and self.event.is_set():
            return True
        return self.control is not None and (self.control / STOP_FILE).exists()

    def report(self, fraction: float, phase: str = "training") -> None:
        if self.control is None:
            return
        path = self.control / f"progress-{self.key}"
        try:
            self.control.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{fraction:.4f} {phase}")
            os.replace(tmp, path)
        except OSError:
            pass  # a worker on another machine: no live progress

    def on_batch_end(self, step, logs):
        batches = int(logs["batches"])
        every = max(1, (batches * self.epochs) // CURVE_POINTS)
        done = logs["epoch"] + logs["batch"] / batches
        if step % every == 0 or logs["batch"] == batches:
            self.curve.append((round(done, 4), round(float(logs["loss"]), 5)))
        if self.event is not None and self.event.is_set():
            self.stop_training = True
        now = time.perf_counter()
        if now - self._last >= PROGRESS_SECONDS:
            self._last = now
            self.report(done / self.epochs)
            if self.stop_requested():
                self.stop_training = True

    def on_train_end(self, logs=None):
        # train_run now scores the whole test set and saves the run.
        if not self.stop_training:
            self.report(1.0, "scoring")


BUSY = "busy"  # a trial's status when another process holds its claim


def _claim(table: Path, key: str, wait: bool, stopped: Callable[[], bool]):
    """Take the claim on trial ``key`` of the table at ``table``.

    Returns the open lock's descriptor (close it to let go), None if no claim
    can be made here (a cluster worker without the sweep's folder: train
    anyway), BUSY if another process holds it and not ``wait``, or "stopped"
    if ``stopped()`` became true while waiting.
    """
    try:
        folder = table.parent / CLAIMS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            folder / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
    except OSError:
        return None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not wait or stopped():
                os.close(fd)
                return "stopped" if wait else BUSY
            time.sleep(CLAIM_POLL_SECONDS)


def _finished_row(table: Path, key: str) -> dict | None:
    """The table's done or failed row for ``key``, if it has one now."""
    try:
        rows = read_results(table)
    except (OSError, DigitsError):
        return None  # unreadable here: train it; adding its row will say why
    return next(
        (r for r in rows if r["key"] == key and r.get("status") in ("done", "failed")),
        None,
    )


def _run_trial(
    kind: str,
    trial: Trial,
    ds,
    train_size: int | None,
    threads: int,
    control: str | None,
    sweep_name: str,
    runs_dir: str,
    table: str | None = None,
    wait: bool = False,
    event=None,
) -> dict:
    """Train one trial and save its run; returns its row of the results table.

    Runs in a worker process (or this one): it must not raise for a trial that
    fails, so that the sweep goes on; the row says what happened. With
    ``table`` (the results table's path), the trial is trained under its claim:
    if another process holds it, the row's status is BUSY (or, with ``wait``,
    this waits for it); if the table already has the trial, that row comes back
    with ``elsewhere: True`` and nothing is trained; a trained trial's row is
    added to the table before the claim is let go, so no other process can
    start it again in between.
    """
    table_path = Path(table) if table else None
    monitor = _Monitor(trial.key, int(trial.params.get("max_iter", 1)), control, event)
    claim = None
    if table_path is not None:
        claim = _claim(table_path, trial.key, wait, monitor.stop_requested)
        if claim in (BUSY, "stopped"):
            return _row(kind, trial, ds, train_size, sweep_name) | {"status": claim}
    try:
        if table_path is not None:
            found = _finished_row(table_path, trial.key)
            if found is not None:
                return found | {"elsewhere": True}
        row = _train_trial(
            kind, trial, ds, train_size, threads, sweep_name, runs_dir, monitor
        )
        if table_path is not None and row["status"] in ("done", "failed"):
            # The parent adds it too (harmlessly): this one is for the claim.
            with contextlib.suppress(OSError, DigitsError):
                append_result(table_path, row)
        return row
    finally:
        if isinstance(claim, int):
            os.close(claim)


def _row(kind: str, trial: Trial, ds, train_size: int | None, sweep_name: str):
    """The columns of ``trial``'s row that do not depend on its training."""
    return {
        "key": trial.key,
        "sweep": sweep_name,
        "label": trial.label,
        "seed": trial.seed,
        "kind": kind,
        "dataset": ds.name,
        "train_size": train_size,
        "epochs": trial.params.get("max_iter"),
        "conv_channels": trial.params.get("conv_channels", ()),
        "hidden_layer_sizes": trial.params.get("hidden_layer_sizes", ()),
        "depth": trial.depth,
        "width": trial.width,
        "config": trial.config,
        "params": trial.params,
    }


def _train_trial(
    kind: str,
    trial: Trial,
    ds,
    train_size: int | None,
    threads: int,
    sweep_name: str,
    runs_dir: str,
    monitor: _Monitor,
) -> dict:
    """Train ``trial`` and save its run; its row (done, failed or stopped)."""
    from threadpoolctl import threadpool_limits

    # A reused worker process may have started under another runs dir.
    if str(store.runs_dir().resolve()) != runs_dir:
        os.environ[store.RUNS_DIR_ENV] = runs_dir
    row = _row(kind, trial, ds, train_size, sweep_name)
    if monitor.stop_requested():
        return row | {"status": "stopped"}
    start = time.perf_counter()
    try:
        with threadpool_limits(limits=threads):
            run = store.train_run(
                kind,
                ds,
                params=_with_threads(kind, trial.params, threads),
                callbacks=[monitor],
                train_size=train_size,
                validation_size=VALIDATION_SIZE,
                name=trial.run_name,
                command=f"sweep {sweep_name} trial {trial.key}",
            )
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the worker processes too; the parent
        # decides what happens next.
        return row | {"status": "stopped"}
    except DigitsError as err:
        if monitor.stop_training:  # stopped before its first batch ended
            return row | {"status": "stopped"}
        return row | {"status": "failed", "error": str(err)}
    except Exception as err:
        # The row carries the error to the user; the traceback only to a debug
        # log, never onto the CLI's stderr (logging's last-resort handler).
        log.debug("Sweep trial %s failed", trial.key, exc_info=True)
        return row | {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    if run.meta.get("stopped") == "interrupted":
        store.delete_run(run)  # half-trained: the resumed sweep trains it again
        return row | {"status": "stopped"}

    try:
        n_params = store.load_model(run).n_params()
    except Exception as err:  # the saved run does not load back: say so, go on
        log.debug("Sweep trial %s: its run does not load", trial.key, exc_info=True)
        return row | {
            "status": "failed",
            "run": run.name,
            "error": f"The run was saved but does not load back: {err}",
        }
    return row | {
        "status": "done",
        "n_params": n_params,
        "test_accuracy": run.test_accuracy,
        "test_loss": run.meta["test"]["loss"],
        "train_seconds": run.meta["train_seconds"],
        "seconds": time.perf_counter() - start,
        "run": run.name,
        "curve": monitor.curve,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in JSON_COLUMNS:
        return json.dumps(store.jsonable(value), separators=(",", ":"))
    return str(value)


def write_results(path: str | os.PathLike[str], rows: Sequence[Mapping]) -> None:
    """Replace the results table at ``path`` with ``rows``, atomically.

    The rows go to a temp file beside it, which is flushed to disk and renamed
    over the table, so a reader sees the old table or the new one, never part of
    one, and a crash leaves one of the two. Several processes adding rows to one
    table must go through ``append_result`` instead, which holds the table's lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Columns this version does not write (a newer version's, or a user's own)
    # are kept after its own, so that rewriting the table loses nothing.
    extra = [
        c
        for c in dict.fromkeys(k for row in rows for k in row)
        if isinstance(c, str) and c not in COLUMNS and c not in INTERNAL_KEYS
    ]
    columns = (*COLUMNS, *extra)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(c, row.get(c)) for c in columns})
    with tempfile.NamedTemporaryFile(
        "w",
        dir=path.parent,
        prefix=".tmp-",
        suffix=".csv",
        delete=False,
        encoding="utf-8",
        newline="",
    ) as f:
        try:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    try:
        os.chmod(f.name, 0o644)  # NamedTemporaryFile makes it private
        os.replace(f.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(f.name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (where the OS allows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class TableError(DataError):
    """A results table that cannot be read: not text, not CSV, not a sweep's."""


def _read_text(path: Path) -> str | None:
    """The table's text, or None if there is none; reads at most
    MAX_TABLE_BYTES + 1 bytes of a regular file (never blocks on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise TableError(
            f"Cannot read the sweep table {path} ({err.strerror}). Check the "
            f"folder's permissions, or set DIGITS_RUNS_DIR to another folder."
        ) from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TableError(
                f"{path} is not a file; a sweep's results table must be one. Move "
                f"it away, then run the sweep again."
            )
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_TABLE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TABLE_BYTES:
        raise TableError(
            f"{path} is larger than {MAX_TABLE_BYTES // 2**20} MB, far more than a "
            f"sweep writes, so it was not read. Move it away, then run the sweep "
            f"again to start a new table."
        )
    if b"\0" in data:
        # What a crash on some filesystems leaves: blocks of zeros, not text.
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise TableError(
            f"{path} is not a sweep's results table: line {line} has a NUL byte "
            f"(the file is damaged). {_MOVE_IT}"
        )
    try:
        # utf-8-sig: a table saved again by a spreadsheet may start with a BOM.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TableError(
            f"{path} is not a sweep's results table: line {line} is not UTF-8 "
            f"text. {_MOVE_IT}"
        ) from None


_MOVE_IT = (
    "It was left as it is: move it away (or delete it), then run the sweep again "
    "to start a new table; the runs it lists stay in the runs folder."
)


def read_results(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a results table, typed; [] if there is none yet.

    Raises TableError (a DataError) naming the file and the line if it is not a
    sweep's table: too large, not UTF-8, not CSV, without a ``key`` or
    ``status`` column, with a row that has no key or an unreadable value. The
    file is only read.
    """
    path = Path(path)
    text = _read_text(path)
    if text is None or not text.strip():
        return []  # none yet, or an empty file (never a table this program wrote)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        fields = reader.fieldnames
        missing = [c for c in ("key", "status") if c not in (fields or ())]
        if missing:
            raise TableError(
                f"{path} is not a sweep's results table (no {missing[0]!r} column). "
                f"{_MOVE_IT}"
            )
        for raw in reader:
            if not (raw.get("key") or "").strip():
                raise TableError(
                    f"{path} is not a sweep's results table: line "
                    f"{reader.line_num} has no key. {_MOVE_IT}"
                )
            rows.append(_typed(path, reader.line_num, raw))
    except csv.Error as err:
        raise TableError(
            f"{path} is not a sweep's results table: line {reader.line_num} is not "
            f"CSV ({err}). {_MOVE_IT}"
        ) from None
    return rows


def _typed(path: Path, line: int, raw: Mapping[str | None, Any]) -> dict:
    row: dict[str, Any] = {}
    for column, text_value in raw.items():
        if column is None:
            continue  # cells beyond the header's columns
        try:
            if text_value in ("", None):
                row[column] = None
            elif column in JSON_COLUMNS:
                row[column] = json.loads(text_value)
            elif column in INT_COLUMNS:
                row[column] = int(text_value)
            elif column in FLOAT_COLUMNS:
                row[column] = float(text_value)
            else:
                row[column] = text_value
        except (ValueError, RecursionError) as err:
            raise TableError(
                f"{path} has an unreadable {column} value {text_value[:40]!r} on "
                f"line {line} ({str(err)[:80]}). {_MOVE_IT}"
            ) from None
    return row


@contextlib.contextmanager
def _table_lock(path: Path):
    """Hold the exclusive lock of the table at ``path`` (blocks until free).

    A ``flock`` on a file beside the table, never on the table itself: the table
    is replaced by rename, and a lock on the old file would lock nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(
        path.with_name(LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _rank(row: Mapping | None) -> int:
    """Which of two rows of one trial a table keeps: done over failed over
    anything else; the one already there on a tie."""
    return {"done": 2, "failed": 1}.get((row or {}).get("status"), 0)


def _keep_aside(path: Path) -> Path:
    """Rename a damaged table to ``results.csv.corrupt-<time>``; returns it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        aside = path.with_name(
            f"{path.name}{CORRUPT_SUFFIX}{stamp}" + (f"-{n}" if n > 1 else "")
        )
        if not aside.exists():
            os.rename(path, aside)
            return aside
    raise TableError(f"Too many damaged tables kept beside {path}; delete some.")


def append_result(
    path: str | os.PathLike[str],
    row: Mapping,
    *,
    salvage: Sequence[Mapping] | None = None,
) -> bool:
    """Add one trial's row to the table at ``path``; safe from many processes.

    Under the table's lock: re-read the table, keep one row per trial key (a
    ``done`` row over a ``failed`` one; otherwise the row already there), and
    replace the table atomically. Returns whether the table changed.

    salvage : if the table cannot be read, it is kept aside
        (``results.csv.corrupt-<time>``, with a warning in the log) and a new one
        is written from these rows plus ``row``. Without it (None), TableError.
    """
    path = Path(path)
    with _table_lock(path):
        try:
            rows = read_results(path)
        except TableError as err:
            if salvage is None:
                raise
            aside = _keep_aside(path)
            log.warning(
                "%s Kept it as %s; a new table was started with the %d row(s) "
                "this sweep knows.",
                err,
                aside.name,
                len(salvage) + 1,
            )
            found, rows = [], []
            for known in salvage:
                _merge(rows, known)
        else:
            found, rows = rows, []
            for old in found:  # a table from before the lock may repeat a key
                _merge(rows, old)
        changed = _merge(rows, row) or len(rows) != len(found)
        if changed:
            write_results(path, rows)
    return changed


def _merge(rows: list[dict], row: Mapping) -> bool:
    """Put ``row`` into ``rows`` (one per key); whether ``rows`` changed."""
    for i, old in enumerate(rows):
        if old.get("key") == row["key"]:
            if _rank(row) > _rank(old):
                rows[i] = dict(row)
                return True
            return False
    rows.append(dict(row))
    return True


@dataclass
class Outcome:
    """What ``run_sweep`` did."""

    rows: list[dict]  # this sweep's finished trials (done or failed), table order
    ran: int  # trials finished by this call
    skipped: int  # trials already in the table
    stopped: int  # trials stopped (not finished) or never started
    seconds: float
    interrupted: bool
    results_path: Path


def _client(address: str):
    """A Dask client connected to ``address``; ConfigError if it cannot be."""
    try:
        from dask.distributed import Client
    except ImportError as err:
        raise ConfigError(
            f"Running on a Dask cluster needs dask.distributed ({err}); "
            f"pip install -r requirements.txt."
        ) from err
    try:
        return Client(address, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigError(
            f"Cannot reach the Dask scheduler at {address!r} ({err}). Check the "
            f"address (e.g. tcp://10.0.0.5:8786) and that the scheduler runs."
        ) from err


class _StopWatcher:
    """Turns the stop event into the stop file that worker processes look for."""

    def __init__(self, stop: threading.Event, control: Path) -> None:
        self.stop, self.control = stop, control
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._watch, name="digits-sweep-stop", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            if self.stop.wait(0.1):
                with contextlib.suppress(OSError):
                    (self.control / STOP_FILE).touch()
                return

    def finish(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


@contextlib.contextmanager
def _backend(scheduler: str | None, ds):
    """joblib's loky backend, or its dask backend on the cluster at ``scheduler``.

    On a cluster the dataset is sent to the workers once, ahead of the trials
    (joblib only does that by itself for objects it can weakly reference, which a
    ``Dataset`` tuple is not); loky shares it through a memory map instead.
    """
    import joblib

    if not scheduler:
        with joblib.parallel_config(backend="loky"):
            yield
        return
    client = _client(scheduler)
    try:
        with joblib.parallel_config(backend="dask", scatter=[ds]):
            yield
    finally:
        client.close()


def run_sweep(
    sweep: Sweep,
    ds,
    *,
    n_jobs: int | None = None,
    scheduler: str | None = None,
    stop: threading.Event | None = None,
    on_result: Callable[[dict], None] | None = None,
    plan_estimate: Estimate | None = None,
) -> Outcome:
    """Run the trials of ``sweep`` that its table does not have yet.

    n_jobs : trials at once (default ``default_n_jobs``); 1 runs them here.
    scheduler : a Dask scheduler's address; the trials then run on its cluster.
    stop : set it to stop (see the module docstring); finished trials are kept.
    on_result : called here with each finished trial's row, as it arrives.
    plan_estimate : the sweep's ``estimate``; trials are then dispatched longest
        first, as the estimate assumes (else in grid order).

    Raises ConfigError if ``ds`` is not the sweep's dataset. A KeyboardInterrupt
    stops the sweep too, keeping what finished, and is then raised again.
    """
    if Path(ds.name).stem != Path(sweep.dataset).stem:
        raise ConfigError(
            f"Sweep {sweep.name} is planned on {sweep.dataset}, not {ds.name}."
        )
    stop = stop or threading.Event()
    table = [
        r
        for r in read_results(sweep.results_path)
        if r.get("status") in ("done", "failed")
    ]
    done = {r["key"] for r in table}
    todo = [t for t in sweep.trials if t.key not in done]
    if plan_estimate is not None:
        todo.sort(key=lambda t: -plan_estimate.trial_seconds.get(t.key, 0.0))
    if scheduler:
        n_jobs, threads = -1, 1  # the cluster's workers decide how many at once
    else:
        n_jobs = n_jobs or default_n_jobs(len(todo))
        threads = threads_per_trial(n_jobs)
    control = _start_control(sweep)
    by_key = {t.key: t for t in sweep.trials}
    start = time.perf_counter()
    ran = elsewhere = 0
    busy: list[Trial] = []  # claimed by another process: run after the others

    def record(row: dict) -> None:
        nonlocal ran, elsewhere
        if row["status"] == BUSY:
            busy.append(by_key[row["key"]])
            return
        if row["status"] == "stopped":
            return
        if row.pop("elsewhere", False):
            elsewhere += 1  # another process trained it; its row is in the table
        else:
            ran += 1
            try:
                append_result(sweep.results_path, row, salvage=table)
            except OSError as err:
                raise DigitsError(
                    f"Cannot add trial {row['label']} seed {row['seed']} to "
                    f"{sweep.results_path} ({err.strerror or err}). Its run is "
                    f"saved; free the disk or fix the folder, then run the sweep "
                    f"again to resume."
                ) from err
        table.append(row)
        if on_result is not None:
            on_result(row)

    common = (
        sweep.kind,
        ds,
        sweep.train_size,
        threads,
        str(control),
        sweep.name,
        str(store.runs_dir().resolve()),
    )
    results_path = str(sweep.results_path)
    watcher = _StopWatcher(stop, control)
    # Rounds: the first skips the trials another process is training (BUSY);
    # the next waits for each of them, then takes its row from the table (or
    # trains it, if that process stopped before finishing it).
    pending, wait = todo, False
    try:
        if n_jobs == 1 and not scheduler:
            while pending and not stop.is_set():
                for trial in pending:
                    if stop.is_set():
                        break
                    record(
                        _run_trial(
                            *common[:1],
                            trial,
                            *common[1:],
                            table=results_path,
                            wait=wait,
                            event=stop,
                        )
                    )
                pending, busy, wait = busy, [], True
        elif todo:
            watcher.start()
            import joblib

            with _backend(scheduler, ds):
                while pending and not stop.is_set():
                    results = joblib.Parallel(
                        n_jobs=n_jobs, return_as="generator_unordered"
                    )(
                        joblib.delayed(_run_trial)(
                            common[0], t, *common[1:], table=results_path, wait=wait
                        )
                        for t in pending
                    )
                    try:
                        for row in results:
                            record(row)
                    finally:
                        results.close()  # cancels the trials not yet started
                    pending, busy, wait = busy, [], True
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        watcher.finish()
        shutil.rmtree(control, ignore_errors=True)
        with contextlib.suppress(OSError):
            control.parent.rmdir()  # only if no other process runs this sweep
    # Read back, so that the rows are typed as they will be on the next read.
    keys = {t.key: i for i, t in enumerate(sweep.trials)}
    rows = sorted(
        (r for r in read_results(sweep.results_path) if r["key"] in keys),
        key=lambda r: keys[r["key"]],
    )
    stopped = len(todo) - ran - elsewhere
    return Outcome(
        rows=rows,
        ran=ran,
        skipped=len(sweep.trials) - len(todo) + elsewhere,
        stopped=stopped,
        seconds=time.perf_counter() - start,
        interrupted=stopped > 0,
        results_path=sweep.results_path,
    )


def _start_control(sweep: Sweep) -> Path:
    """Check that the runs folder and the sweep's folder take files, before any
    training; make this run's own control folder and return it.

    Control folders are named ``<host>-<pid>-<random>``; those of processes of
    this host that are gone (killed) are removed.
    """
    folder = where = sweep.folder
    try:
        for where in (store.runs_dir(), folder):
            where.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=where, prefix=".tmp-"):
                pass
        with _table_lock(sweep.results_path):
            pass
        root = folder / CONTROL_DIR
        host = re.sub(r"[^\w.]", "_", os.uname().nodename) or "host"
        for old in root.glob(f"{host}-*") if root.is_dir() else ():
            pid = old.name.removeprefix(f"{host}-").split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        control = root / f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        control.mkdir(parents=True)
    except OSError as err:
        raise DigitsError(
            f"Cannot write sweep {sweep.name}'s files in {where} "
            f"({err.strerror or err}). Make that folder writable, or set "
            f"DIGITS_RUNS_DIR to a writable folder. Nothing was trained."
        ) from err
    return control


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def trial_progress(sweep: Sweep) -> dict[str, tuple[float, str]]:
    """Trial key -> (fraction of its epochs done, phase: "training" or "scoring"
    the test set), for the trials running now."""
    root = sweep.folder / CONTROL_DIR
    found = {}
    # Every run's control folder: another process's trials of this sweep too.
    for path in root.glob("*/progress-*") if root.is_dir() else ():
        if path.suffix == ".tmp":
            continue
        with contextlib.suppress(OSError, ValueError):
            fraction, phase = path.read_text().split()
            found[path.name.removeprefix("progress-")] = (float(fraction), phase)
    return found


def list_sweeps() -> list[Path]:
    """Results tables of the saved sweeps, newest first."""
    root = sweeps_dir()
    tables = [p for p in root.glob(f"*/{RESULTS_FILE}")] if root.is_dir() else []
    return sorted(tables, key=lambda p: p.stat().st_mtime, reverse=True)


# -- analysis -----------------------------------------------------------------------


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """One row per configuration (label) over its seeds, in first-seen order.

    Each has ``label``, ``depth``, ``width``, ``n_params``, ``n`` (seeds done),
    ``accuracy_mean``/``accuracy_std`` (sample standard deviation; 0 for one seed)
    and ``seconds_mean`` (training time). Failed trials are left out.
    """
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        if row.get("status") == "done" and row.get("test_accuracy") is not None:
            groups.setdefault(row["label"], []).append(row)
    summary = []
    for label, members in groups.items():
        acc = np.array([m["test_accuracy"] for m in members], dtype=float)
        secs = np.array([m["train_seconds"] for m in members], dtype=float)
        first = members[0]
        summary.append(
            {
                "label": label,
                "depth": depth(first),
                "width": width(first),
                "conv_channels": first["conv_channels"],
                "hidden_layer_sizes": first["hidden_layer_sizes"],
                "n_params": first["n_params"],
                "n": len(members),
                "accuracy_mean": float(acc.mean()),
                "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "seconds_mean": float(secs.mean()),
            }
        )
    return summary


def pareto_front(cost: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Which points no other point beats: none is as cheap or cheaper and at
    least as good, and strictly better in one. Boolean array, shape (n,)."""
    cost, score = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    front = np.zeros(len(cost), dtype=bool)
    best = -np.inf
    for i in np.lexsort((-score, cost)):  # by cost, then best score first
        if score[i] > best:
            front[i] = True
            best = score[i]
    return front


# -- in the background (the dashboard) ----------------------------------------------


@dataclass(frozen=True)
class SweepProgress:
    """A consistent copy of a sweep job's state.

    trials : one dict per trial, in grid order: ``key``, ``label``, ``seed``,
        ``state`` (waiting, running, scoring the test set, done, failed,
        earlier: done by a previous run of the sweep), ``fraction`` (0..1)
        and ``test_accuracy``.
    """

    status: str  # queued, running, stopping, done, stopped, failed
    trials: list[dict]
    rows: list[dict]  # the finished trials' rows (done or failed), grid order
    elapsed: float
    estimate: float | None  # seconds the whole sweep was estimated to take
    error: str | None
    queue_position: int | None

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    @property
    def fraction(self) -> float:
        if not self.trials:
            return 0.0
        return sum(t["fraction"] for t in self.trials) / len(self.trials)


class SweepJob:
    """Run a sweep in a daemon thread that first waits for a training slot.

    The dashboard keeps one per session; the thread only writes to the job under
    its lock, and the page polls ``snapshot()``. ``stop()`` ends the running
    trials after their current batch and keeps the finished ones.
    """

    def __init__(
        self,
        sweep: Sweep,
        ds,
        *,
        n_jobs: int | None = None,
        plan_estimate: Estimate | None = None,
    ) -> None:
        self.sweep, self.ds = sweep, ds
        self.n_jobs, self.plan_estimate = n_jobs, plan_estimate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status = "pending"
        self._error: str | None = None
        self._started: float | None = None
        self._ended: float | None = None
        self._rows = {
            r["key"]: r
            for r in read_results(sweep.results_path)
            if r.get("status") in ("done", "failed")
        }
        self._earlier = set(self._rows)
        self._thread: threading.Thread | None = None
        self._slots = slots.shared()
        self._ticket = self._slots.ticket()

    def start(self) -> SweepJob:
        if self._thread is not None:
            raise RuntimeError("This sweep has already been started.")
        self._status = "queued"
        self._thread = threading.Thread(
            target=self._run, name="digits-sweep", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._status in FINAL:
                return
            self._status = "stopping"
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            return self._status in FINAL

    def snapshot(self) -> SweepProgress:
        progress = trial_progress(self.sweep)
        with self._lock:
            rows = dict(self._rows)
            status, error = self._status, self._error
            now = self._ended or time.perf_counter()
            elapsed = now - self._started if self._started is not None else 0.0
        trials = []
        for t in self.sweep.trials:
            row = rows.get(t.key)
            if row is not None:
                state = "earlier" if t.key in self._earlier else row["status"]
                fraction = 1.0
            elif t.key in progress and status in ("running", "stopping"):
                fraction, phase = progress[t.key]
                state = "scoring" if phase == "scoring" else "running"
                fraction = min(1.0, fraction)
            else:
                state, fraction = "waiting", 0.0
            trials.append(
                {
                    "key": t.key,
                    "label": t.label,
                    "seed": t.seed,
                    "state": state,
                    "fraction": fraction,
                    "test_accuracy": (row or {}).get("test_accuracy"),
                }
            )
        order = {t.key: i for i, t in enumerate(self.sweep.trials)}
        return SweepProgress(
            status=status,
            trials=trials,
            rows=sorted(rows.values(), key=lambda r: order[r["key"]]),
            elapsed=elapsed,
            estimate=self.plan_estimate.seconds if self.plan_estimate else None,
            error=error,
            queue_position=(
                self._slots.position(self._ticket)
                if status in ("queued", "stopping") and self._started is None
                else None
            ),
        )

    def _on_result(self, row: dict) -> None:
        with self._lock:
            self._rows[row["key"]] = row

    def _finish(self, status: str, error: str | None = None) -> None:
        with self._lock:
            self._status, self._error = status, error
            self._ended = time.perf_counter()

    def _run(self) -> None:
        with self._slots.slot(self._ticket, self._stop) as got:
            if not got:
                self._finish("stopped")
                return
            with self._lock:
                if self._status == "queued":
                    self._status = "running"
                self._started = time.perf_counter()
            try:
                outcome = run_sweep(
                    self.sweep,
                    self.ds,
                    n_jobs=self.n_jobs,
                    stop=self._stop,
                    on_result=self._on_result,
                    plan_estimate=self.plan_estimate,
                )
            except DigitsError as err:
                self._finish("failed", str(err))
            except Exception as err:
                log.exception("Sweep %s failed", self.sweep.name)
                self._finish(
                    "failed",
                    f"The sweep failed unexpectedly ({type(err).__name__}: {err}). "
                    "The details are in the server's log.",
                )
            else:
                self._finish("stopped" if outcome.interrupted else "done")
