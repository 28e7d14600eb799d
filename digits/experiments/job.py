"""A sweep in the background, for the dashboard: ``SweepJob`` and its snapshots.

The Experiments page keeps one ``SweepJob`` per browser tab, in the
process-wide ``digits.jobs.JobRegistry``, so a reload finds it again. It is a
``digits.jobs.BackgroundJob``: it waits for a training slot, then runs
``run_sweep`` in a daemon thread; the page polls ``snapshot()`` for each
trial's state and progress.
"""

from __future__ import annotations

from dataclasses import dataclass

from digits import cluster
from digits.experiments.planning import Sweep
from digits.experiments.results import read_results
from digits.experiments.running import run_sweep, trial_progress
from digits.experiments.timing import Estimate
from digits.jobs import BackgroundJob, JobProgress


@dataclass(frozen=True, kw_only=True)
class SweepProgress(JobProgress):
    """A consistent copy of a sweep job's state.

    trials : one dict per trial, in grid order: ``key``, ``label``, ``seed``,
        ``state`` (waiting, running, scoring the test set, done, failed,
        earlier: done by a previous run of the sweep), ``fraction`` (0..1)
        and ``test_accuracy``.
    """

    trials: list[dict]
    rows: list[dict]  # the finished trials' rows (done or failed), grid order
    estimate: float | None  # seconds the whole sweep was estimated to take

    @property
    def fraction(self) -> float:
        if not self.trials:
            return 0.0
        return sum(t["fraction"] for t in self.trials) / len(self.trials)


class SweepJob(BackgroundJob):
    """Run a sweep in a daemon thread that first waits for a training slot.

    ``stop()`` ends the running trials after their current batch and keeps the
    finished ones.
    """

    noun = "sweep"
    unexpected = (
        "The sweep failed unexpectedly ({error}). The details are in the server's log."
    )

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
        self._rows = {
            r["key"]: r
            for r in read_results(sweep.results_path)
            if r.get("status") in ("done", "failed")
        }
        self._earlier = set(self._rows)
        super().__init__("digits-sweep")

    def __repr__(self) -> str:
        return f"SweepJob({self.sweep.name!r}, {self.status})"

    def snapshot(self) -> SweepProgress:
        """The job's state now (see ``SweepProgress``)."""
        progress = trial_progress(self.sweep)
        with self._lock:
            rows = dict(self._rows)
            status, error = self._status, self._error
            elapsed, queue_position = self._elapsed(), self._queue_position()
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
            queue_position=queue_position,
        )

    def _on_result(self, row: dict) -> None:
        with self._lock:
            self._rows[row["key"]] = row

    def _work(self) -> str:
        # On the Dask cluster when one is set and reachable (digits.cluster);
        # its trials save their runs in the sweep's folder, so there the workers
        # must share this machine's disk (see run_sweep).
        scheduler = cluster.address() if cluster.client() is not None else None
        outcome = run_sweep(
            self.sweep,
            self.ds,
            n_jobs=self.n_jobs,
            scheduler=scheduler,
            stop=self._stop,
            on_result=self._on_result,
            plan_estimate=self.plan_estimate,
        )
        return "stopped" if outcome.interrupted else "done"
