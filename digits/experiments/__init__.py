"""Sweeps: train a grid of configurations for a few seeds each, and compare them.

    sweep = plan("cnn", {"conv_channels": [(), (16,), (32, 64)]}, dataset="mnist",
                 seeds=(0, 1), train_size=10_000, params={"max_iter": 1})
    estimate(sweep, ds).seconds        # before anything runs
    outcome = run_sweep(sweep, ds)     # trials in parallel; results.csv + runs
    summarise(outcome.rows)            # one row per configuration, over seeds

A sweep is the product of the grid's values, times the seeds. Each trial is one
``digits.training.train_run`` (a run in the store) and one row of the sweep's table,
``$DIGITS_RUNS_DIR/.sweeps/<name>/results.csv``. A sweep's default name is a hash
of all its trials' keys: the same command resumes, any other grid gets a table
of its own.

The package, in the order a sweep goes through it:

- ``planning``: the grid checked (a ConfigError before anything runs), the
  trials listed with stable keys and names; the command line's values parsed.
- ``timing``: trials at once and threads each on this machine, and the estimate.
- ``running``: ``run_sweep``, with joblib's loky processes or a Dask cluster,
  stopping, resuming, and live progress through a control folder.
- ``trial``: one trial in a worker, under its claim, saved as a run and a row.
- ``results``: the results table, shared safely between processes, and the
  summaries drawn from it.
- ``job``: ``SweepJob``, a sweep in a background thread for the dashboard.

The names below are the ones callers use; ``from digits import experiments``
then ``experiments.plan(...)`` works as it always has.
"""

from digits.experiments.job import SweepJob, SweepProgress
from digits.experiments.planning import (
    MAX_SEED,
    MAX_TRIALS,
    RESULTS_FILE,
    SWEEPS_DIR,
    Sweep,
    Trial,
    depth,
    parse_seeds,
    parse_values,
    plan,
    sweeps_dir,
    width,
)
from digits.experiments.results import (
    MAX_TABLE_BYTES,
    TableError,
    append_result,
    compared_by,
    list_sweeps,
    pareto_front,
    read_results,
    summarise,
    write_results,
)
from digits.experiments.running import (
    CONTROL_DIR,
    Outcome,
    run_sweep,
    trial_progress,
)
from digits.experiments.timing import (
    WORKER_START_SECONDS,
    Estimate,
    default_n_jobs,
    estimate,
    threads_per_trial,
)
from digits.experiments.trial import CLAIMS_DIR
from digits.training import VALIDATION_SIZE

__all__ = [
    "CLAIMS_DIR",
    "CONTROL_DIR",
    "MAX_SEED",
    "MAX_TABLE_BYTES",
    "MAX_TRIALS",
    "RESULTS_FILE",
    "SWEEPS_DIR",
    "VALIDATION_SIZE",
    "WORKER_START_SECONDS",
    "Estimate",
    "Outcome",
    "Sweep",
    "SweepJob",
    "SweepProgress",
    "TableError",
    "Trial",
    "append_result",
    "compared_by",
    "default_n_jobs",
    "depth",
    "estimate",
    "list_sweeps",
    "pareto_front",
    "parse_seeds",
    "parse_values",
    "plan",
    "read_results",
    "run_sweep",
    "summarise",
    "sweeps_dir",
    "threads_per_trial",
    "trial_progress",
    "width",
    "write_results",
]
