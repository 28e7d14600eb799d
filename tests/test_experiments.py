"""Sweeps (digits.experiments, `digits sweep`): grids are checked before anything
runs, trials become runs and rows of a CSV, an interrupted sweep keeps what
finished and resumes, and the same sweep runs on a Dask cluster.

Every sweep here trains tiny networks for one epoch on a few hundred real MNIST
images and scores a 500-image slice of the test set, so each trial takes well
under a second.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from digits import cli, experiments, registry, slots, store
from digits.data import load_dataset
from digits.errors import ConfigError, DataError
from digits.experiments import timing
from digits.experiments.trial import PROGRESS_PREFIX

TINY = {"max_iter": 1, "batch_size": 32}
GRID = {"conv_channels": [(), (2,)], "hidden_layer_sizes": [(8,)]}
TRAIN_SIZE = 200


@pytest.fixture
def runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def small(mnist):
    """MNIST with its test set cut to 500 images (scored after every trial)."""
    return mnist._replace(x_test=mnist.x_test[:500], y_test=mnist.y_test[:500])


def tiny_sweep(**changes) -> experiments.Sweep:
    options = dict(
        kind="cnn",
        grid=GRID,
        dataset="mnist",
        seeds=(0, 1),
        train_size=TRAIN_SIZE,
        params=TINY,
        name="tiny",
    )
    options.update(changes)
    kind, grid = options.pop("kind"), options.pop("grid")
    return experiments.plan(kind, grid, **options)


def saved_runs(root) -> list[str]:
    return sorted(
        run.name for run in store.list_runs(root, include_pretrained=False)[0]
    )


# -- bad grids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "params", "seeds", "message"),
    [
        ({"conv_channels": []}, {}, (0,), "no values for conv_channels"),
        ({"conv_channels": [(0,)]}, {}, (0,), "Invalid value (0,) for conv_channels"),
        ({"kernel_size": [4]}, {}, (0,), "Invalid value 4 for kernel_size"),
        ({"activation": ["relu", "swish"]}, {}, (0,), "'swish' for activation"),
        ({"learning_rate_init": [0.0]}, {}, (0,), "for learning_rate_init"),
        ({"conv_channels": [(4,)]}, {"max_iter": 0}, (0,), "for max_iter"),
        ({"dropout": [0.1, -0.5]}, {}, (0,), "-0.5 for dropout"),
        ({"depth": [3]}, {}, (0,), "has no parameter depth"),
        ({"conv_channels": "(4,)"}, {}, (0,), "must be a list"),
        ({"conv_channels": [(4,)]}, {}, (), "at least one seed"),
        (
            {"hidden_layer_sizes": [(n,) for n in range(1, 21)]},
            {},
            range(11),
            "220 trials",
        ),
    ],
)
def test_bad_grids_fail_before_anything_runs(runs, grid, params, seeds, message):
    with pytest.raises(ConfigError) as err:
        experiments.plan("cnn", grid, params=params, seeds=seeds, name="bad")
    assert message in str(err.value)
    assert not runs.exists()  # nothing trained, nothing written


def test_a_grid_for_another_kind_names_the_parameter(runs):
    with pytest.raises(ConfigError, match="conv_channels"):
        experiments.plan("dense", {"conv_channels": [(4,)]})
    with pytest.raises(ConfigError, match="Unknown model kind"):
        experiments.plan("resnet", {})


def test_command_line_values_are_parsed_or_refused():
    cnn = registry.get("cnn")
    layers = cnn.hyperparameter("conv_channels")
    assert experiments.parse_values(layers, "(),(16,),(32, 64)") == [
        (),
        (16,),
        (32, 64),
    ]
    assert experiments.parse_values(layers, "30;100;128,64") == [
        (30,),
        (100,),
        (128, 64),
    ]
    rate = cnn.hyperparameter("learning_rate_init")
    assert experiments.parse_values(rate, "0.001,0.01") == [0.001, 0.01]
    for text in ("(16", "(16,)x", "(a,)"):
        with pytest.raises(ConfigError, match="conv_channels"):
            experiments.parse_values(layers, text)
    assert experiments.parse_seeds("3") == (0, 1, 2)
    assert experiments.parse_seeds("0,5,7") == (0, 5, 7)
    with pytest.raises(ConfigError, match="seeds"):
        experiments.parse_seeds("two")


def test_plan_lists_every_configuration_and_seed_with_stable_keys():
    sweep = tiny_sweep()
    assert len(sweep.trials) == 4
    assert [(t.label, t.seed) for t in sweep.trials] == [
        ("conv none", 0),
        ("conv none", 1),
        ("conv 2", 0),
        ("conv 2", 1),
    ]
    assert [t.run_name for t in sweep.trials][:2] == [
        "tiny-conv-none-s0",
        "tiny-conv-none-s1",
    ]
    assert len({t.key for t in sweep.trials}) == 4
    assert [t.key for t in tiny_sweep().trials] == [t.key for t in sweep.trials]
    # The key depends on what is trained, not on the sweep's name.
    assert tiny_sweep(name="other").trials[0].key == sweep.trials[0].key
    assert tiny_sweep(train_size=300).trials[0].key != sweep.trials[0].key
    assert (sweep.trials[2].depth, sweep.trials[2].width) == (2, 8)


def test_the_default_name_is_the_whole_grid():
    """Without a name, the same grid gets the same name (the same command
    resumes) and any change to what is trained gets another (two grids never
    share a table unless they are given one name)."""
    unnamed = tiny_sweep(name=None)
    assert unnamed.name.startswith("sweep-cnn-mnist-")
    same = [
        tiny_sweep(name=None),
        # The same values in another order, or given twice: the same trials.
        tiny_sweep(name=None, grid={**GRID, "conv_channels": [(2,), (), (2,)]}),
        tiny_sweep(name=None, seeds=(1, 0)),
        # A value fixed in params instead of a one-value grid: the same trials.
        tiny_sweep(
            name=None,
            grid={"conv_channels": GRID["conv_channels"]},
            params={**TINY, "hidden_layer_sizes": (8,)},
        ),
    ]
    assert {s.name for s in same} == {unnamed.name}
    others = [
        tiny_sweep(name=None, kind="dense", grid={"hidden_layer_sizes": [(8,)]}),
        tiny_sweep(name=None, dataset="fashion-mnist"),
        tiny_sweep(name=None, train_size=300),
        tiny_sweep(name=None, seeds=(0, 1, 2)),
        tiny_sweep(name=None, seeds=(0, 2)),
        tiny_sweep(name=None, grid={**GRID, "conv_channels": [()]}),
        tiny_sweep(name=None, grid={**GRID, "conv_channels": [(), (2,), (4,)]}),
        tiny_sweep(name=None, grid={**GRID, "hidden_layer_sizes": [(9,)]}),
        tiny_sweep(name=None, params={**TINY, "max_iter": 2}),
        tiny_sweep(name=None, params={**TINY, "batch_size": 64}),
        tiny_sweep(name=None, grid={**GRID, "learning_rate_init": [0.01]}),
    ]
    names = [unnamed.name] + [s.name for s in others]
    assert len(set(names)) == len(names), names
    # A given name is used as it is, whatever the grid.
    assert tiny_sweep(name="mine", seeds=(5,)).name == "mine"


# -- running ------------------------------------------------------------------------


def test_a_sweep_saves_runs_and_a_table(runs, small):
    sweep = tiny_sweep()
    estimate = experiments.estimate(sweep, small, n_jobs=2)
    assert estimate.n_jobs == 2 and estimate.threads == 1
    assert set(estimate.trial_seconds) == {t.key for t in sweep.trials}
    # Two at a time takes less than one after another, more than a quarter of it.
    total = sum(estimate.trial_seconds.values())
    assert total / 4 < estimate.seconds - experiments.WORKER_START_SECONDS < total
    seen = []
    outcome = experiments.run_sweep(
        sweep, small, n_jobs=2, on_result=seen.append, plan_estimate=estimate
    )
    assert (outcome.ran, outcome.skipped, outcome.stopped) == (4, 0, 0)
    assert not outcome.interrupted
    assert sorted(r["key"] for r in seen) == sorted(t.key for t in sweep.trials)
    table = experiments.read_results(sweep.results_path)
    assert sorted(r["key"] for r in table) == sorted(t.key for t in sweep.trials)
    assert saved_runs(runs) == sorted(t.run_name for t in sweep.trials)
    for row in table:
        run = store.open_run(row["run"])
        assert row["status"] == "done"
        assert row["test_accuracy"] == run.test_accuracy
        assert 0.1 < row["test_accuracy"] <= 1
        assert row["n_params"] == estimate.n_params[row["key"]]
        assert row["train_seconds"] > 0
        assert run.meta["dataset"]["n_train"] == TRAIN_SIZE
        assert run.meta["params"]["random_state"] == row["seed"]
        curve = np.array(row["curve"])
        assert curve.shape[1] == 2 and curve[-1, 0] == pytest.approx(1.0)
        assert np.all(np.diff(curve[:, 0]) > 0)
    # The dense network (no conv) has 784*8+8 + 8*10+10 parameters.
    dense = next(r for r in table if r["label"] == "conv none")
    assert dense["n_params"] == 784 * 8 + 8 + 8 * 10 + 10
    assert outcome.rows == sorted(
        table, key=lambda r: [t.key for t in sweep.trials].index(r["key"])
    )


def test_running_a_sweep_again_skips_the_trials_done(runs, small):
    sweep = tiny_sweep(seeds=(0,))
    first = experiments.run_sweep(sweep, small, n_jobs=1)
    assert first.ran == 2
    again = experiments.run_sweep(sweep, small, n_jobs=1)
    assert (again.ran, again.skipped) == (0, 2)
    assert again.rows == first.rows
    # A bigger grid under the same name only trains what is new.
    wider = tiny_sweep(seeds=(0,), grid={**GRID, "hidden_layer_sizes": [(8,), (4,)]})
    more = experiments.run_sweep(wider, small, n_jobs=1)
    assert (more.ran, more.skipped) == (2, 2)
    assert len(saved_runs(runs)) == 4
    assert len(experiments.read_results(sweep.results_path)) == 4


def test_a_trial_claimed_elsewhere_is_waited_for_not_trained_again(runs):
    """Another process holds the first trial's claim: the sweep trains the
    second, then waits for the first and takes its row from the table."""
    ds = load_dataset("sklearn-digits")
    sweep = experiments.plan(
        "mlp",
        {"hidden_layer_sizes": [(8,), (16,)]},
        dataset="sklearn-digits",
        seeds=(0,),
        train_size=200,
        params={"max_iter": 1},
        name="claimed",
    )
    first, second = sweep.trials
    claims = sweep.folder / experiments.CLAIMS_DIR
    claims.mkdir(parents=True)
    # flock conflicts between open files, so this stands for another process.
    held = os.open(claims / f"{first.key}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    seen = []

    def finish_elsewhere():
        row = {**seen[0], "key": first.key, "label": "from elsewhere", "run": None}
        experiments.append_result(sweep.results_path, row)
        os.close(held)

    def on_result(row):
        seen.append(row)
        if len(seen) == 1:  # while this sweep waits, the other process finishes
            threading.Timer(0.5, finish_elsewhere).start()

    outcome = experiments.run_sweep(sweep, ds, n_jobs=1, on_result=on_result)
    assert [r["key"] for r in seen] == [second.key, first.key]
    assert seen[1]["label"] == "from elsewhere"  # taken from the table
    assert (outcome.ran, outcome.skipped, outcome.stopped) == (1, 1, 0)
    assert not outcome.interrupted
    assert saved_runs(runs) == [second.run_name]  # the first was not trained here
    table = experiments.read_results(sweep.results_path)
    assert sorted(r["key"] for r in table) == sorted([first.key, second.key])


def test_stopping_keeps_finished_trials_and_a_second_run_resumes(runs, small):
    sweep = tiny_sweep()
    stop = threading.Event()
    first = experiments.run_sweep(
        sweep, small, n_jobs=1, stop=stop, on_result=lambda row: stop.set()
    )
    assert first.interrupted
    assert (first.ran, first.stopped) == (1, 3)
    done = experiments.read_results(sweep.results_path)
    assert [r["key"] for r in done] == [sweep.trials[0].key]
    # No half-trained run is left behind.
    assert saved_runs(runs) == [sweep.trials[0].run_name]
    second = experiments.run_sweep(sweep, small, n_jobs=1)
    assert (second.ran, second.skipped, second.stopped) == (3, 1, 0)
    assert saved_runs(runs) == sorted(t.run_name for t in sweep.trials)


def test_progress_is_read_while_runs_come_and_go(runs):
    """The Experiments page reads every run's progress while those runs end and
    remove their control folders; a folder gone between listing and reading it
    once crashed the page (FileNotFoundError in CI)."""
    sweep = tiny_sweep()
    root = sweep.folder / experiments.CONTROL_DIR
    steady = root / "host-1-steady"
    steady.mkdir(parents=True)
    (steady / f"{PROGRESS_PREFIX}kept").write_text("0.5 training")
    done = threading.Event()

    def come_and_go():
        for turn in itertools.count():
            if done.is_set():
                return
            control = root / f"host-2-{turn}"
            control.mkdir()
            (control / f"{PROGRESS_PREFIX}t{turn}").write_text("0.1 training")
            shutil.rmtree(control)

    churn = threading.Thread(target=come_and_go)
    churn.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            progress = experiments.trial_progress(sweep)
            assert progress["kept"] == (0.5, "training")
    finally:
        done.set()
        churn.join()


def test_stopping_worker_processes_mid_trial(runs, small):
    """In loky workers the stop travels through the sweep's stop file: trials
    long enough to be running when it comes are stopped within them.

    Five epochs, so that a trial outlasts the half second a worker may take to
    notice the stop however fast training gets (one epoch of 20,000 images
    sometimes finished first); a stopped trial ends within that half second."""
    sweep = tiny_sweep(
        grid={"conv_channels": [(2,)], "hidden_layer_sizes": [(8,)]},
        train_size=20_000,
        seeds=(0, 1),
        params={**TINY, "max_iter": 5},
    )
    stop, seen = threading.Event(), []

    def stop_once_running():
        while not stop.is_set():
            progress = experiments.trial_progress(sweep)
            if progress:
                seen.append(progress)
                stop.set()
            stop.wait(0.05)

    watcher = threading.Thread(target=stop_once_running)
    watcher.start()
    try:
        outcome = experiments.run_sweep(sweep, small, n_jobs=2, stop=stop)
    finally:
        stop.set()
        watcher.join()
    assert seen and all(
        0 < fraction < 1 and phase == "training" for fraction, phase in seen[0].values()
    )
    assert outcome.interrupted and outcome.ran == 0 and outcome.stopped == 2
    assert saved_runs(runs) == []
    assert experiments.read_results(sweep.results_path) == []
    assert not (sweep.folder / experiments.CONTROL_DIR).exists()


def test_ctrl_c_in_the_parent_keeps_finished_trials(runs, small):
    sweep = tiny_sweep()

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        experiments.run_sweep(sweep, small, n_jobs=1, on_result=interrupt)
    assert len(experiments.read_results(sweep.results_path)) == 1
    resumed = experiments.run_sweep(sweep, small, n_jobs=1)
    assert (resumed.ran, resumed.skipped) == (3, 1)


def test_a_sweep_on_a_dask_cluster(runs, small):
    from dask.distributed import LocalCluster

    sweep = tiny_sweep()
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,  # worker threads in this process, talking over TCP
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        outcome = experiments.run_sweep(
            sweep, small, scheduler=cluster.scheduler_address
        )
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert (outcome.ran, outcome.stopped) == (4, 0)
    assert saved_runs(runs) == sorted(t.run_name for t in sweep.trials)
    assert len(experiments.read_results(sweep.results_path)) == 4


def test_an_unreachable_scheduler_is_a_clear_error(runs, small):
    with pytest.raises(ConfigError, match=r"Dask scheduler at 'tcp://127\.0\.0\.1:9'"):
        experiments.run_sweep(tiny_sweep(), small, scheduler="tcp://127.0.0.1:9")
    assert saved_runs(runs) == []


def test_results_are_written_atomically_and_read_back(tmp_path):
    path = tmp_path / "results.csv"
    row = {
        "key": "abc",
        "label": "conv 2",
        "seed": 1,
        "status": "done",
        "conv_channels": (2,),
        "test_accuracy": 0.5,
        "curve": [(0.5, 2.0), (1.0, 1.5)],
        "error": None,
    }
    experiments.write_results(path, [row])
    [back] = experiments.read_results(path)
    assert back["seed"] == 1 and back["test_accuracy"] == 0.5
    assert back["conv_channels"] == [2] and back["curve"] == [[0.5, 2.0], [1.0, 1.5]]
    assert back["error"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temp files
    path.write_text("name,value\nx,1\n")
    with pytest.raises(DataError, match="not a sweep's results table"):
        experiments.read_results(path)


# -- in the background (SweepJob) ---------------------------------------------------


@pytest.fixture
def one_slot(monkeypatch):
    monkeypatch.setattr(slots, "_shared", slots.TrainingSlots(1))


def test_a_sweep_job_runs_to_done_with_each_trials_row(runs, one_slot):
    ds = load_dataset("sklearn-digits")
    sweep = experiments.plan(
        "mlp",
        {"hidden_layer_sizes": [(8,), (16,)]},
        dataset="sklearn-digits",
        seeds=(0,),
        train_size=200,
        params={"max_iter": 1},
        name="job",
    )
    job = experiments.SweepJob(sweep, ds, n_jobs=1)
    assert job.snapshot().status == "pending"
    assert job.start().join(60)
    snap = job.snapshot()
    assert (snap.status, snap.error, snap.finished) == ("done", None, True)
    assert [t["state"] for t in snap.trials] == ["done", "done"]
    assert snap.fraction == 1.0 and snap.elapsed > 0
    assert [r["key"] for r in snap.rows] == [t.key for t in sweep.trials]
    # Run again, the same sweep finds both trials done earlier.
    again = experiments.SweepJob(sweep, ds, n_jobs=1).start()
    assert again.join(60)
    assert [t["state"] for t in again.snapshot().trials] == ["earlier", "earlier"]


def test_a_sweep_job_on_the_wrong_dataset_fails_with_the_message(runs, one_slot):
    sweep = tiny_sweep(seeds=(0,))  # planned on MNIST
    job = experiments.SweepJob(sweep, load_dataset("sklearn-digits")).start()
    assert job.join(60)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert snap.error == "Sweep tiny is planned on mnist, not sklearn-digits."
    assert saved_runs(runs) == []


def test_a_sweep_jobs_unexpected_error_is_one_line_and_logged(runs, one_slot, caplog):
    job = experiments.SweepJob(tiny_sweep(seeds=(0,)), None).start()  # no dataset
    assert job.join(60)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert snap.error.startswith("The sweep failed unexpectedly (AttributeError: ")
    assert snap.error.endswith("The details are in the server's log.")
    assert "Traceback" not in snap.error
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage() == "SweepJob('tiny', running) failed"
    assert record.exc_info[0] is AttributeError
    assert saved_runs(runs) == []


# -- analysis -----------------------------------------------------------------------


def test_summary_has_error_bars_across_seeds():
    rows = [
        {
            "label": "a",
            "status": "done",
            "test_accuracy": acc,
            "train_seconds": s,
            "depth": 1,
            "width": 8,
            "conv_channels": [],
            "hidden_layer_sizes": [8],
            "n_params": 100,
        }
        for acc, s in ((0.90, 1.0), (0.94, 3.0))
    ] + [
        {
            "label": "b",
            "status": "done",
            "test_accuracy": 0.97,
            "train_seconds": 5.0,
            "depth": 2,
            "width": 16,
            "conv_channels": [16],
            "hidden_layer_sizes": [8],
            "n_params": 900,
        },
        {"label": "b", "status": "failed", "test_accuracy": None},
    ]
    a, b = experiments.summarise(rows)
    assert (a["label"], a["n"], b["n"]) == ("a", 2, 1)
    assert a["accuracy_mean"] == pytest.approx(0.92)
    assert a["accuracy_std"] == pytest.approx(np.std([0.90, 0.94], ddof=1))
    assert a["seconds_mean"] == pytest.approx(2.0)
    assert b["accuracy_std"] == 0.0


def test_pareto_front_keeps_the_points_nothing_beats():
    cost = [1.0, 2.0, 3.0, 2.0, 4.0, 1.0]
    score = [0.90, 0.95, 0.94, 0.95, 0.99, 0.80]
    # 2 is beaten by 1 (cheaper, better); 5 by 0; 1 and 3 tie (both kept).
    assert experiments.pareto_front(cost, score).tolist() == [
        True,
        True,
        False,
        False,
        True,
        False,
    ]
    assert experiments.pareto_front([], []).tolist() == []


def test_schedule_matches_joblib_dispatch():
    assert timing._schedule([3, 3, 1, 1], 2) == 4
    assert timing._schedule([5, 1, 1, 1], 2) == 5
    assert timing._schedule([2, 2, 2], 1) == 6


# -- the command line -------------------------------------------------------------


def test_cli_sweep_json_and_resume(runs, capsys):
    argv = [
        "sweep",
        "--model",
        "dense",
        "--hidden-layer-sizes",
        "8;4",
        "--seeds",
        "1",
        "--train-size",
        "200",
        "--epochs",
        "1",
        "--n-jobs",
        "1",
        "--name",
        "cli",
        "--json",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ran"], out["skipped"], out["trials"]) == (2, 0, 2)
    assert out["estimate_seconds"] > 0
    assert [c["label"] for c in out["configurations"]] == ["hidden 8", "hidden 4"]
    assert len(experiments.read_results(out["results"])) == 2
    assert cli.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["ran"], again["skipped"]) == (0, 2)


def test_cli_sweep_refuses_a_bad_grid(runs, capsys):
    assert cli.main(["sweep", "--conv-channels", "(16,),(0,)"]) == cli.EXIT_USAGE
    assert "Invalid value (0,) for conv_channels" in capsys.readouterr().err
    assert not runs.exists()


def test_a_grid_without_max_iter_is_estimated_for_the_kinds_default_epochs():
    """Without max_iter the trials train for the model kind's default epochs (3
    for the CNN, 20 for the MLP), and the estimate must count that many."""
    from digits.estimator import CNNClassifier

    cnn = experiments.plan("cnn", {"conv_channels": [(16,)]})
    assert cnn.epochs == CNNClassifier().max_iter == 3
    mlp = experiments.plan("mlp", {"hidden_layer_sizes": [(30,)]})
    assert mlp.epochs == registry.get("mlp").build().get_params()["max_iter"]
    chosen = experiments.plan("cnn", {"conv_channels": [(16,)]}, params={"max_iter": 1})
    assert chosen.epochs == 1
