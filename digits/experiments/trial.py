"""One trial of a sweep: trained under its claim, saved as a run, returned as a row.

``run_trial`` runs in a worker process (loky or a Dask worker) or in the sweep's
own process. It trains one configuration and seed with ``digits.training.train_run``
(a run in the store, named after the sweep, its configuration and seed) and
returns the trial's row of the results table; a trial that fails gives a
``failed`` row instead of raising, so that the sweep goes on.

Claims: a trial is trained under a ``flock`` on ``.claims/<key>.lock`` in the
sweep's folder. A process that finds a trial claimed runs its other trials
first, then waits for that one and takes its row from the table instead of
training it again.

The control folder (one per ``run_sweep`` call, see ``digits.experiments.running``)
is how a worker process hears of a stop (a ``STOP`` file, checked between
batches) and reports its progress (``progress-<key>`` files).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from digits import store
from digits.errors import DigitsError
from digits.experiments.planning import Trial
from digits.experiments.results import append_result, read_results
from digits.experiments.timing import with_threads
from digits.nn.callbacks import Callback
from digits.training import VALIDATION_SIZE, train_run

log = logging.getLogger(__name__)

CLAIMS_DIR = ".claims"  # <key>.lock, held while a process trains that trial
STOP_FILE = "STOP"  # in a control folder: the trials it runs must stop
PROGRESS_PREFIX = "progress-"  # progress-<key> in a control folder: "0.4 training"
CLAIM_POLL_SECONDS = 0.2  # how often a trial claimed elsewhere is checked
PROGRESS_SECONDS = 0.5  # how often a trial reports its progress
CURVE_POINTS = 50  # points of each trial's training-loss curve
BUSY = "busy"  # a trial's status when another process holds its claim


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
        path = self.control / f"{PROGRESS_PREFIX}{self.key}"
        # Not files.atomic_write: this is rewritten twice a second and only
        # read while the sweep runs, so a flush to disk would buy nothing.
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


def run_trial(
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
            run = train_run(
                kind,
                ds,
                params=with_threads(kind, trial.params, threads),
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
        "val_accuracy": (run.meta.get("history") or [{}])[-1].get("val_accuracy"),
        "test_accuracy": run.test_accuracy,
        "test_loss": run.meta["test"]["loss"],
        "train_seconds": run.meta["train_seconds"],
        "seconds": time.perf_counter() - start,
        "run": run.name,
        "curve": monitor.curve,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
