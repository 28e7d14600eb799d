"""Running a sweep: its trials in parallel, resumable, stoppable.

    outcome = run_sweep(sweep, ds, n_jobs=2, stop=event, on_result=print)

``run_sweep`` runs the trials its table does not have yet. Each finished trial
is added to the table as soon as it ends, so an interrupted sweep keeps what
finished, and running the same sweep again skips the trials already in it.

Parallelism: on one machine trials run in joblib's loky processes, ``n_jobs`` at
a time, with the threads ``digits.experiments.timing`` gives each. With
``n_jobs=1`` the trials run one after another in this process. Given a Dask
scheduler address, the same trials run on that cluster through joblib's dask
backend, one thread each (start the workers with ``--nthreads 1``);
``dask.distributed`` is imported only then.

Stopping: ``stop`` (a ``threading.Event``) ends the running trials after their
current batch (their half-trained runs are deleted) and skips the rest. Worker
processes learn of it through a file in a control folder of each ``run_sweep``
call's own (``.control/<host>-<pid>-<id>/`` in the sweep's folder, so that
stopping one process's sweep leaves another's running), which they check
between batches; they also report each trial's progress there. On a cluster
whose workers do not share that folder, stopping cancels the trials not yet
started and the others run to the end, and there is no per-trial progress.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from digits import files, store
from digits.engine.system import pid_alive
from digits.errors import ConfigError, DigitsError
from digits.experiments.planning import Sweep, Trial
from digits.experiments.results import append_result, read_results, table_lock
from digits.experiments.timing import Estimate, default_n_jobs, threads_per_trial
from digits.experiments.trial import BUSY, PROGRESS_PREFIX, STOP_FILE, run_trial

CONTROL_DIR = ".control"  # <host>-<pid>-<id>/: a run_sweep call's stop flag, progress
CONNECT_SECONDS = 5  # to wait for a Dask scheduler


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
            "pip install 'digits[cluster]' (in a checkout: pip install -r "
            "requirements.txt)."
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
                        run_trial(
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
                        joblib.delayed(run_trial)(
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
        with table_lock(sweep.results_path):
            pass
        root = folder / CONTROL_DIR
        host = re.sub(r"[^\w.]", "_", os.uname().nodename) or "host"
        for old in root.glob(f"{host}-*") if root.is_dir() else ():
            pid = old.name.removeprefix(f"{host}-").split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
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


def trial_progress(sweep: Sweep) -> dict[str, tuple[float, str]]:
    """Trial key -> (fraction of its epochs done, phase: "training" or "scoring"
    the test set), for the trials running now."""
    found = {}
    # Every run's control folder: another process's trials of this sweep too.
    # Each may be removed at any moment, as its run ends.
    for control in _entries(sweep.folder / CONTROL_DIR):
        for path in _entries(control):
            if not path.name.startswith(PROGRESS_PREFIX) or path.suffix == ".tmp":
                continue
            # Bounded, as anything read from a folder others can write to.
            with contextlib.suppress(OSError, ValueError):
                fraction, phase = files.read_bounded(path, 64).decode().split()
                key = path.name.removeprefix(PROGRESS_PREFIX)
                found[key] = (float(fraction), phase)
    return found


def _entries(folder: Path) -> list[Path]:
    """What a folder holds; nothing if it is missing or was just removed."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []
