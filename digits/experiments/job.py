"""A sweep in the background, for the dashboard: ``SweepJob`` and its snapshots.

The Experiments page keeps one ``SweepJob`` per browser session. The job waits
for a training slot (``digits.slots``), then runs ``run_sweep`` in a daemon
thread; the page polls ``snapshot()`` for each trial's state and progress.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from digits import slots
from digits.errors import DigitsError
from digits.experiments.planning import Sweep
from digits.experiments.results import read_results
from digits.experiments.running import run_sweep, trial_progress
from digits.experiments.timing import Estimate

log = logging.getLogger(__name__)

FINAL = ("done", "stopped", "failed")


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
