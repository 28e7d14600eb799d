"""Sweeps: train a grid of configurations for a few seeds each, and compare them.

    sweep = plan("cnn", {"conv_channels": [(), (16,), (32, 64)]}, dataset="mnist",
                 seeds=(0, 1), train_size=10_000, params={"max_iter": 1})
    estimate(sweep, ds).seconds        # before anything runs
    outcome = run_sweep(sweep, ds)     # trials in parallel; results.csv + runs

A sweep is the product of the grid's values, times the seeds. Each trial is one
``digits.store.train_run`` (a run in the store, named after the sweep, its
configuration and seed) and one row of the sweep's table,
``$DIGITS_RUNS_DIR/.sweeps/<name>/results.csv``: test accuracy and loss, training
time, parameter count, depth, width and the training-loss curve. The table is
rewritten atomically after every trial, so an interrupted sweep keeps what
finished, and running the same sweep again skips the trials already in it (each
trial has a stable key made of the model kind, dataset, training-set size,
hyperparameters and seed).

Parallelism: on one machine trials run in joblib's loky processes, ``n_jobs`` at a
time, each limited to ``cores // n_jobs`` threads (the CNN trainer's Python
threads and BLAS), so that two trials on two cores never fight over them. With
``n_jobs=1`` the trials run one after another in this process with two threads
each. Given a Dask scheduler address, the same trials run on that cluster through
joblib's dask backend, one thread each (start the workers with
``--nthreads 1``); ``dask.distributed`` is imported only then.

Stopping: ``stop`` (a ``threading.Event``) ends the running trials after their
current batch (their half-trained runs are deleted) and skips the rest. Worker
processes learn of it through a file in the sweep's folder, which they check
between batches; they also report each trial's progress there. On a cluster
whose workers do not share that folder, stopping cancels the trials not yet
started and the others run to the end, and there is no per-trial progress.

Left out: the estimate assumes the machine is otherwise idle, as when it was
measured (``digits.calibrate``); other processes competing for the cores slow
the sweep down by as much.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digits import calibrate, registry, slots, store
from digits.errors import ConfigError, DataError, DigitsError
from digits.nn.callbacks import Callback
from digits.nn.training import blas_threads

log = logging.getLogger(__name__)

SWEEPS_DIR = ".sweeps"  # under the runs dir; hidden, so never listed as a run
RESULTS_FILE = "results.csv"
CONTROL_DIR = ".control"  # the stop flag and per-trial progress, while running
STOP_FILE = "STOP"
MAX_TRIALS = 200  # a bigger grid is almost certainly a typo
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
        dataset and a hash of the training-set size, the fixed hyperparameters
        and the names of those swept, so that the same sweep (or one with more
        values or seeds) resumes where it left off.
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
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ConfigError("A sweep needs at least one seed.")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"Seeds must be 0 or more; got {list(seeds)}.")
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
    if name is None:
        # From what the grid holds fixed, not from its values or seeds: the same
        # sweep with more values or seeds shares its table and adds to it.
        digest = _key(
            kind, dataset, train_size, {"fixed": fixed, "swept": sorted(values)}
        )
        name = f"sweep-{kind}-{Path(dataset).stem}-{digest[:6]}"
    name = store.sanitize_name(name)
    trials = []
    for combo in itertools.product(*values.values()):
        config = dict(zip(values, combo, strict=True))
        for seed in seeds:
            hyper = spec.params(**fixed, **config, random_state=seed)
            label = _label({k: config[k] for k in swept})
            trials.append(
                Trial(
                    key=_key(kind, dataset, train_size, hyper),
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
        return [hp.parse(group) for group in groups]
    parts = [p for p in re.split(r"[;,]", text) if p.strip()]
    if not parts:
        raise ConfigError(f"No values given for {hp.name}.")
    return [hp.parse(p) for p in parts]


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "3" -> (0, 1, 2); "0,5,7" -> (0, 5, 7)."""
    try:
        numbers = [int(p) for p in re.split(r"[;,\s]+", text.strip()) if p]
    except ValueError:
        raise ConfigError(
            f"Cannot read seeds {text!r}: give a count (3) or a list (0,5,7)."
        ) from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise ConfigError(f"The number of seeds must be 1 or more; got {text!r}.")
        return tuple(range(numbers[0]))
    return tuple(numbers)


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


def _run_trial(
    kind: str,
    trial: Trial,
    ds,
    train_size: int | None,
    threads: int,
    control: str | None,
    sweep_name: str,
    runs_dir: str,
    event=None,
) -> dict:
    """Train one trial and save its run; returns its row of the results table.

    Runs in a worker process (or this one): it must not raise for a trial that
    fails, so that the sweep goes on; the row says what happened.
    """
    from threadpoolctl import threadpool_limits

    # A reused worker process may have started under another runs dir.
    if str(store.runs_dir().resolve()) != runs_dir:
        os.environ[store.RUNS_DIR_ENV] = runs_dir
    monitor = _Monitor(trial.key, int(trial.params.get("max_iter", 1)), control, event)
    row = {
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
        log.exception("Sweep trial %s failed", trial.key)
        return row | {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    if run.meta.get("stopped") == "interrupted":
        store.delete_run(run)  # half-trained: the resumed sweep trains it again
        return row | {"status": "stopped"}

    model = store.load_model(run)
    return row | {
        "status": "done",
        "n_params": model.n_params(),
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
    """Write the results table to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(c, row.get(c)) for c in COLUMNS})
    with tempfile.NamedTemporaryFile(
        "w",
        dir=path.parent,
        prefix=".tmp-",
        suffix=".csv",
        delete=False,
        encoding="utf-8",
        newline="",
    ) as f:
        f.write(buffer.getvalue())
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def read_results(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a results table, typed; [] if there is none yet.

    Raises DataError naming the file if it is not a sweep's table.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "key" not in reader.fieldnames:
        raise DataError(f"{path} is not a sweep's results table (no 'key' column).")
    rows = []
    for raw in reader:
        row: dict[str, Any] = {}
        try:
            for column, text_value in raw.items():
                if column is None:
                    continue
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
        except ValueError as err:
            raise DataError(
                f"{path} has an unreadable {column} value {text_value!r} ({err}); "
                f"delete the row or the file to run those trials again."
            ) from err
        rows.append(row)
    return rows


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
    control = sweep.folder / CONTROL_DIR
    shutil.rmtree(control, ignore_errors=True)
    control.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ran = 0

    def record(row: dict) -> None:
        nonlocal ran
        if row["status"] == "stopped":
            return
        ran += 1
        table.append(row)
        write_results(sweep.results_path, table)
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
    watcher = _StopWatcher(stop, control)
    try:
        if n_jobs == 1 and not scheduler:
            for trial in todo:
                if stop.is_set():
                    break
                record(_run_trial(*common[:1], trial, *common[1:], event=stop))
        elif todo:
            watcher.start()
            import joblib

            with _backend(scheduler, ds):
                results = joblib.Parallel(
                    n_jobs=n_jobs, return_as="generator_unordered"
                )(joblib.delayed(_run_trial)(common[0], t, *common[1:]) for t in todo)
                try:
                    for row in results:
                        record(row)
                finally:
                    results.close()  # cancels the trials not yet started
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        watcher.finish()
        shutil.rmtree(control, ignore_errors=True)
    # Read back, so that the rows are typed as they will be on the next read.
    keys = {t.key: i for i, t in enumerate(sweep.trials)}
    rows = sorted(
        (r for r in read_results(sweep.results_path) if r["key"] in keys),
        key=lambda r: keys[r["key"]],
    )
    return Outcome(
        rows=rows,
        ran=ran,
        skipped=len(sweep.trials) - len(todo),
        stopped=len(todo) - ran,
        seconds=time.perf_counter() - start,
        interrupted=len(todo) > ran,
        results_path=sweep.results_path,
    )


def trial_progress(sweep: Sweep) -> dict[str, tuple[float, str]]:
    """Trial key -> (fraction of its epochs done, phase: "training" or "scoring"
    the test set), for the trials running now."""
    control = sweep.folder / CONTROL_DIR
    found = {}
    for path in control.glob("progress-*") if control.is_dir() else ():
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
