"""AppTest tests of a browser tab reloaded while its sweep runs (issue 17, item 2).

A reload is a new session that arrives with the tab's URL, client id and all;
the old session never runs again. Here each session is an AppTest in this
process, sharing the server's one job registry (``ui.job_registry``). A live
tab is imitated by a thread that beats its heartbeat every second, as its
sidebar's refresh does in a browser. The end-to-end tests in
``tests/e2e/test_reload.py`` do the same with the Train page in Chromium.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from streamlit.testing.v1 import AppTest

from digits import store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
sys.path.insert(0, str(ROOT))
from test_app import page  # noqa: E402
from test_app_experiments import TIMEOUT, tiny_grid  # noqa: E402

import ui  # noqa: E402

BEAT_SECONDS = 1.0  # as ui.SIDEBAR_REFRESH


def arrive(url: dict) -> AppTest:
    """A new session opening the Experiments page with the query ``url``."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(url)
    at.switch_page("pages/experiments.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_a_reload_finds_the_sweep_and_a_link_opened_elsewhere_does_not(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    owner = AppTest.from_file(APP, default_timeout=TIMEOUT)
    owner.run()
    page(owner, "experiments")
    tiny_grid(owner, hidden=[(30,), (100,)])
    owner.button(key="sweep-start").click().run()
    job = owner.session_state[ui.SWEEP_JOB_KEY]
    url = dict(owner.query_params)  # the tab's URL, with its client id
    client = url["client"]

    # The tab reloads: the old session falls silent, the new one waits a few
    # seconds to be sure of it, then has the tab and its sweep.
    reloaded = arrive(url)
    assert reloaded.query_params["client"] == client
    assert reloaded.session_state[ui.SWEEP_JOB_KEY] is job
    assert "sweep-stop" in [button.key for button in reloaded.button]  # its view

    # The same link opened elsewhere while the reloaded tab is alive: a tab of
    # its own, without the sweep or its Stop. (AppTest does not write the
    # widgets' values in its URL: the e2e tests check the settings there.)
    registry, token = ui.job_registry(), reloaded.session_state[ui.TOKEN_KEY]
    alive = threading.Event()

    def beat() -> None:
        while not alive.wait(BEAT_SECONDS):
            registry.heartbeat(client, token)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        stranger = arrive(url)
    finally:
        alive.set()
        beating.join()
    assert stranger.query_params["client"] != client
    assert ui.SWEEP_JOB_KEY not in stranger.session_state
    assert "sweep-stop" not in [button.key for button in stranger.button]
    assert registry.job(client, ui.SWEEP_JOB_KEY) is job
    assert job.join(60) and job.snapshot().status == "done"
