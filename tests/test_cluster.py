"""Tests for digits.cluster: training jobs on a Dask cluster.

A real ``LocalCluster`` on 127.0.0.1 with worker processes (they share nothing
with the test's process but the disk, which the jobs do not use to talk): jobs
train small CNNs on real MNIST subsets there, stream their progress back, obey
Stop and Pause, survive a killed worker, and fall back to training here when the
scheduler cannot be reached.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import LocalCluster

from digits import cluster, slots, store
from digits.training_job import TrainingJob

ROOT = Path(__file__).resolve().parents[1]
# ui.py (the pages' helper module) sits beside app.py, outside the package.
sys.path.insert(0, str(ROOT))
import ui  # noqa: E402

TIMEOUT = 120  # seconds a job may take before a test gives up on it
SMALL_CNN = {"conv_channels": (8, 16), "kernel_size": 3, "hidden_layer_sizes": (32,)}


def start_cluster(workers: int) -> LocalCluster:
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # never the default 8787, which may be taken
    )


@pytest.fixture(scope="module")
def two_workers():
    with start_cluster(2) as local:
        yield local


@pytest.fixture(autouse=True)
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """A fresh line of jobs and no connection left from another test."""
    monkeypatch.setattr(slots, "_shared", slots.TrainingSlots(1))
    monkeypatch.setattr(cluster, "_connection", None)
    yield
    conn = cluster._connection
    if conn is not None and conn.client is not None:
        conn.client.close()


@pytest.fixture
def on(two_workers, monkeypatch):
    """Jobs train on the two-worker cluster."""
    monkeypatch.setenv(cluster.SCHEDULER_ENV, two_workers.scheduler_address)
    return two_workers


def wait_for(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def listed(runs) -> list[str]:
    """Everything in the runs folder, hidden half-written folders included."""
    return sorted(os.listdir(runs)) if runs.exists() else []


def kill_worker_running(local: LocalCluster, dask_client) -> str:
    """SIGKILL the worker process that runs a task now; its address."""
    wait_for(lambda: any(dask_client.processing().values()))
    address = next(a for a, keys in dask_client.processing().items() if keys)
    nanny = next(w for w in local.workers.values() if w.worker_address == address)
    os.kill(nanny.process.process.pid, signal.SIGKILL)
    return address


def test_a_job_trains_on_a_worker_streams_progress_and_saves_here(on, mnist, runs):
    params = {**SMALL_CNN, "max_iter": 2}
    job = TrainingJob("cnn", mnist, params, train_size=3000).start()
    seen = []
    while not job.join(0.1):
        seen.append(job.snapshot())
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert cluster.client() is not None and cluster.notice() is None
    # Progress came back while it trained: rising, with curves and views inside.
    fractions = [s.fraction for s in seen]
    assert any(0 < f < 1 for f in fractions)
    assert fractions == sorted(fractions)
    assert [e["epoch"] for e in snap.epochs] == [1, 2]
    assert snap.points and snap.points[-1][0] == 2.0
    assert snap.live is not None and snap.live.filters.shape == (8, 3, 3)
    # The run is in this machine's store, complete, and the same model that
    # training here gives: the worker ran the very same code.
    assert listed(runs) == [snap.run.name]
    remote = store.load_model(snap.run.name)
    here = store.load_model(
        TrainingJob("cnn", mnist, params, train_size=3000)._train_and_save()
    )
    pairs = zip(remote.model_.parameters(), here.model_.parameters(), strict=True)
    for (key, p1, _), (_, p2, _) in pairs:
        np.testing.assert_array_equal(p1, p2, err_msg=key)


def test_stop_reaches_the_worker_within_a_second(on, mnist):
    job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 50}, train_size=5000)
    job.start()
    wait_for(lambda: job.snapshot().fraction > 0.01)
    asked = time.monotonic()
    job.stop()
    # The worker reports "saving" once its training loop has ended.
    wait_for(lambda: job.snapshot().status in ("saving", "stopped"))
    ended = time.monotonic() - asked
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "stopped" and snap.fraction < 0.5
    assert store.open_run(snap.run.name).meta["stopped"] == "interrupted"
    # Measured here, so it includes the worker's report of "saving" (every
    # REPORT_SECONDS) and any load on this machine; the figure for a quiet one is
    # in the closing note. The worker's own stop_latency is the batch that ran.
    assert ended < 3.0, ended
    assert snap.stop_latency is not None and snap.stop_latency < 1.0


def test_pause_and_a_new_rate_reach_the_worker(on, mnist):
    job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 3}, train_size=5000)
    job.start()
    wait_for(lambda: job.snapshot().fraction > 0.05)
    job.pause()
    wait_for(lambda: job.snapshot().paused)
    held = job.snapshot().fraction
    time.sleep(1.0)
    assert job.snapshot().fraction == held  # no batch while paused
    job.set_learning_rate(0.0123)
    job.resume()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "done" and not snap.paused
    assert [words for _, words in snap.changes] == ["learning rate 0.0123"]


def test_a_killed_worker_s_job_starts_again_on_the_other(on, mnist, runs):
    job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 4}, train_size=5000)
    job.start()
    wait_for(lambda: job.snapshot().fraction > 0.1)
    kill_worker_running(on, cluster.client())
    wait_for(lambda: job.snapshot().notice is not None)
    assert "attempt 2" in job.snapshot().notice
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert listed(runs) == [snap.run.name]  # one run, nothing half-written
    assert store.open_run(snap.run.name).meta["stopped"] is None
    on.wait_for_workers(2, timeout=60)  # the nanny restarts it, for the next tests


def test_a_job_whose_workers_keep_dying_fails_with_a_message(monkeypatch, mnist, runs):
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = start_cluster(1)
    with local:
        monkeypatch.setenv(cluster.SCHEDULER_ENV, local.scheduler_address)
        job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 50}, train_size=5000)
        job.start()
        wait_for(lambda: job.snapshot().fraction > 0.01)
        kill_worker_running(local, cluster.client())
        assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert "nothing was saved" in snap.error and "Train it again" in snap.error
    assert listed(runs) == []


def test_an_unreachable_scheduler_trains_here_with_a_notice(monkeypatch, mnist, runs):
    address, _ = free_address()
    monkeypatch.setenv(cluster.SCHEDULER_ENV, address)
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 2)
    job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 1}, train_size=600)
    job.start()
    # While the job's thread waits for the scheduler, a page asking about the
    # cluster does not wait with it.
    wait_for(lambda: cluster._connecting.locked())
    asked = time.monotonic()
    assert not cluster.connected() and cluster.capacity() == 1
    assert time.monotonic() - asked < 0.5
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "done" and listed(runs) == [snap.run.name]
    notice = cluster.notice()
    assert address in notice and "train on this machine" in notice
    # It is not tried again at once (each page would wait for it otherwise).
    started = time.monotonic()
    assert cluster.client() is None
    assert time.monotonic() - started < 0.5


def test_the_line_is_as_long_as_the_cluster_is_wide(on):
    assert cluster.client() is not None
    assert cluster.capacity() == 2
    assert slots.shared().capacity == 2


def test_a_run_sent_back_is_checked_before_it_is_listed(on, mnist, runs):
    job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 1}, train_size=600)
    run = job.start().join(TIMEOUT) and job.snapshot().run
    packed = store.pack_run(run)
    damaged = {**packed, "weights.npz": packed["weights.npz"][:-10] + b"0" * 10}
    with pytest.raises(store.ModelFileError, match="SHA-256"):
        store.receive_run(damaged, "damaged")
    with pytest.raises(store.ModelFileError, match="a file named"):
        store.receive_run({**packed, "../escape": b"x"}, "escape")
    assert listed(runs) == [run.name]
    again = store.receive_run(packed, run.name)
    assert again.name == f"{run.name}-2" and again.test_accuracy == run.test_accuracy


def test_the_command_line_trains_on_the_cluster(on, runs, capsys):
    from digits.cli import main

    args = ["train", "--model", "cnn", "--preset", "quick", "--train-size", "2000"]
    assert main([*args, "--max-iter", "2", "--name", "remote", "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"Training on the Dask cluster at {on.scheduler_address}" in err
    assert err.count("epoch ") == 2  # each epoch printed as it ended there
    assert json.loads(out)["name"] == "remote" and listed(runs) == ["remote"]
    meta = store.open_run("remote").meta
    assert meta["preset"] == "quick" and "digits train --model cnn" in meta["command"]
    assert meta["dataset"]["n_train"] == 2000


def test_the_experiments_page_s_sweeps_run_on_the_cluster(on, mnist, runs):
    from digits import experiments

    sweep = experiments.plan(
        "cnn",
        {"learning_rate_init": [1e-3, 3e-3]},
        dataset="mnist",
        train_size=500,
        params={**SMALL_CNN, "max_iter": 1},
        name="on-cluster",
    )
    small = mnist._replace(x_test=mnist.x_test[:500], y_test=mnist.y_test[:500])
    job = experiments.SweepJob(sweep, small).start()
    seen = set()
    while not job.join(0.05):
        # The trials run on the workers: their tasks show on the scheduler.
        seen.update(k for keys in cluster.client().processing().values() for k in keys)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert [t["state"] for t in snap.trials] == ["done", "done"]
    assert any("run_trial" in str(key) or "batch" in str(key) for key in seen), seen


def train_page():
    """The Train page in an AppTest, set to the quick preset on 1,000 images."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/train.py")
    at.run()
    at.selectbox(key="train-preset-cnn").set_value("quick").run()
    at.select_slider(key="train-size-mnist").set_value(1000).run()
    return at


def test_the_train_page_trains_on_the_cluster_and_lists_the_run(on, runs):
    at = train_page()
    next(b for b in at.button if b.label == "Start training").click().run()
    job = at.session_state["training-job"]
    wait_for(lambda: job.snapshot().fraction > 0)  # progress from the worker
    assert job.join(TIMEOUT)
    assert cluster.connected() and cluster.notice() is None
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    run = job.snapshot().run
    assert any(run.name in s.value for s in at.success)
    assert listed(runs) == [run.name]


def free_address() -> tuple[str, int]:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}", port


LOCAL = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]


def start_scheduler(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["dask", "scheduler", "--port", str(port), *LOCAL], stderr=subprocess.DEVNULL
    )


def test_a_job_whose_scheduler_goes_away_trains_here_instead(monkeypatch, mnist, runs):
    address, port = free_address()
    scheduler = start_scheduler(port)
    worker = subprocess.Popen(
        ["dask", "worker", address, "--nthreads", "1", *LOCAL],
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv(cluster.SCHEDULER_ENV, address)
        monkeypatch.setattr(cluster, "CONNECT_SECONDS", 30)  # while it starts
        job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 30}, train_size=5000)
        job.start()
        wait_for(lambda: job.snapshot().fraction > 0.01)
        assert cluster.connected()
        scheduler.kill()
        wait_for(lambda: job.snapshot().fallback is not None)
        assert "trains on this machine instead" in job.snapshot().fallback
        wait_for(lambda: job.snapshot().fraction > 0)  # training here
        job.stop()  # Stop works as for any local job
        assert job.join(TIMEOUT)
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait()
    snap = job.snapshot()
    assert snap.status == "stopped", snap.error
    assert listed(runs) == [snap.run.name]


def test_a_cluster_whose_only_worker_lacks_digits_sends_the_job_back_here(
    monkeypatch, mnist, runs, tmp_path
):
    """A worker machine without digits: its worker cannot unpickle the job and
    closes itself (its nanny with it), leaving the cluster with no workers. The
    job does not wait for one forever: it trains here, with the reason."""
    shadow = tmp_path / "no-digits" / "digits"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("no digits here")\n')
    address, port = free_address()
    scheduler = start_scheduler(port)
    worker = subprocess.Popen(
        ["dask", "worker", address, "--nthreads", "1", *LOCAL],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(shadow.parent)},
        cwd=tmp_path,
    )
    try:
        monkeypatch.setenv(cluster.SCHEDULER_ENV, address)
        monkeypatch.setattr(cluster, "CONNECT_SECONDS", 30)  # while it starts
        monkeypatch.setattr(cluster, "NO_WORKERS_SECONDS", 3.0)
        wait_for(lambda: cluster.client() is not None and cluster.capacity() == 1)
        job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 1}, train_size=600)
        assert job.start().join(TIMEOUT)
        assert worker.wait(TIMEOUT) is not None  # the worker did close itself
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait()
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert listed(runs) == [snap.run.name]  # trained here
    assert "has had no workers" in snap.fallback and "pip install" in snap.fallback
    assert cluster.notice() == snap.fallback  # set aside: the next job trains here
    assert not cluster.connected()


# A scheduler on which ``import digits`` fails, as on a machine where the
# teacher forgot to install it: Dask's scheduler unpickles each task it is sent.
WITHOUT_DIGITS = """
import sys
sys.modules["digits"] = None  # import digits raises ImportError
from distributed.cli.dask_scheduler import main
sys.argv = ["dask-scheduler", *sys.argv[1:]]
main()
"""


def test_a_cluster_without_digits_sends_jobs_back_here_with_a_notice(
    monkeypatch, mnist, runs, capsys
):
    address, port = free_address()
    scheduler = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_DIGITS, "--port", str(port), *LOCAL],
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        ["dask", "worker", address, "--nthreads", "1", *LOCAL],
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv(cluster.SCHEDULER_ENV, address)
        monkeypatch.setattr(cluster, "CONNECT_SECONDS", 30)  # while it starts
        wait_for(lambda: cluster.client() is not None and cluster.capacity() == 1)
        job = TrainingJob("cnn", mnist, {**SMALL_CNN, "max_iter": 1}, train_size=600)
        assert job.start().join(TIMEOUT)
        snap = job.snapshot()
        assert snap.status == "done", snap.error
        assert listed(runs) == [snap.run.name]  # trained here instead
        for told in (snap.fallback, cluster.notice()):
            assert "cannot load digits' training jobs" in told
            assert "train on this machine" in told and "pip install" in told
        # The cluster is set aside for a while: the next job does not try it.
        assert cluster.client() is None and not cluster.connected()
        # The Train page says so in a learner's words, the details below.
        monkeypatch.setattr(cluster, "RETRY_SECONDS", 0)  # so that it tries again
        at = train_page()
        next(b for b in at.button if b.label == "Start training").click().run()
        page_job = at.session_state["training-job"]
        page_job.pause()  # held here, before its first batch, while we look
        wait_for(lambda: page_job.snapshot().paused)
        at.run()
        warnings = [w.value for w in at.warning]
        assert ui.TRAINS_HERE in warnings
        assert not any("cannot load" in w for w in warnings)  # once, in details
        [details] = [e for e in at.expander if "whoever runs the cluster" in e.label]
        assert "cannot load digits' training jobs" in details.markdown[0].value
        page_job.stop()
        assert page_job.join(TIMEOUT)
        from digits.cli import main

        args = ["train", "--model", "cnn", "--preset", "quick", "--train-size", "600"]
        assert main([*args, "--max-iter", "1", "--name", "cli-here"]) == 0
        err = capsys.readouterr().err
        assert "cannot load digits' training jobs" in err and "Traceback" not in err
        assert "cli-here" in listed(runs)
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait()
