"""A browser on another machine's address, in Chromium: refused unless serving
the network was asked for.

Loopback binding itself is checked in ``tests/bad_input/test_bad_network.py``.
This covers what binding cannot: a server that listens widely anyway (a
``STREAMLIT_SERVER_ADDRESS=0.0.0.0`` left in the environment) must still refuse
other machines, and one started to serve them on purpose must serve them.

To be "another machine" without exposing anything, each case runs
``netns_probe.py`` in a network namespace of its own (``unshare --net``): the
server and Chromium see only that namespace's loopback interface, which carries
10.200.0.1, an address of no real network. A visit to http://10.200.0.1:PORT/
is then, for the server, a client from another machine; nothing outside the
namespace can reach the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from appdriver import free_port

from digits import dashboard

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OTHER = "10.200.0.1"  # netns_probe.OTHER_MACHINE
NETNS = ["unshare", "--net", "--map-root-user"]
PROBE_SECONDS = 600
REFUSED = f"another machine ({OTHER})"
WARNING = "digits: warning: the dashboard listens on"


@pytest.fixture(scope="module")
def netns():
    """Fail, as for a missing Chromium, if no network namespace can be made."""
    if shutil.which("unshare") is None:
        pytest.fail("These tests need unshare(1) (util-linux) for a network namespace")
    made = subprocess.run([*NETNS, "true"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(
            "These tests need a network namespace (unshare --net --map-root-user): "
            f"{made.stderr.strip()}; allow user namespaces, or run them as root."
        )


def probe(tmp_path: Path, command: list[str], env: dict, urls: list[str], port: int):
    """Run the server and the visits in a fresh namespace: (result, server log)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "HOME": str(home),
        "DIGITS_RUNS_DIR": str(tmp_path / "runs"),
        "PYTHONPATH": str(ROOT),
    }
    full_env.pop("STREAMLIT_SERVER_ADDRESS", None)
    full_env.pop(dashboard.ALLOW_NETWORK_ENV, None)
    full_env.update(env)
    log = tmp_path / "server.log"
    spec = {
        "command": command,
        "cwd": str(ROOT),
        "env": full_env,
        "port": port,
        "log": str(log),
        "urls": urls,
    }
    runner = subprocess.Popen(
        [*NETNS, sys.executable, str(HERE / "netns_probe.py"), json.dumps(spec)],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the probe, its server and Chromium: one group
    )
    try:
        out, err = runner.communicate(timeout=PROBE_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    text = log.read_text() if log.exists() else ""
    assert runner.returncode == 0, f"{err}\nserver log:\n{text}"
    return json.loads(out.splitlines()[-1]), text


def streamlit_run(port: int, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        f"--server.port={port}",
        "--server.headless=true",
        "--server.fileWatcherType=none",
        *flags,
    ]


def test_a_stray_wide_address_still_refuses_other_machines(netns, tmp_path):
    port = free_port()
    urls = [
        # First a page's own URL: a fresh server runs that page alone first.
        f"http://{OTHER}:{port}/train",
        f"http://{OTHER}:{port}/",
        f"http://127.0.0.1:{port}/",
    ]
    result, log = probe(
        tmp_path,
        streamlit_run(port),
        {"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"},
        urls,
        port,
    )
    assert result["listening"] == ["0.0.0.0"]  # the hole the guard covers
    for url in urls[:2]:
        shown = result["visits"][url]
        assert shown["titles"] == ["digits"], (url, shown)
        assert any(REFUSED in e for e in shown["errors"]), (url, shown)
        assert shown["nav_links"] == 0 and shown["auto_nav"] == 0, (url, shown)
    local = result["visits"][urls[2]]
    assert "Handwritten digits" in local["titles"] and not local["errors"], local
    assert log.count(WARNING) == 1 and "Traceback" not in log, log


def launcher(port: int) -> list[str]:
    code = (
        "import sys; from digits.dashboard import launch; "
        f"sys.exit(launch('0.0.0.0', {port}, headless=True))"
    )
    return [sys.executable, "-c", code]


# How the server was told to serve the network: (command for a port, environment).
ON_PURPOSE = {
    "DIGITS_ALLOW_NETWORK=1": (
        streamlit_run,
        {"STREAMLIT_SERVER_ADDRESS": "0.0.0.0", dashboard.ALLOW_NETWORK_ENV: "1"},
    ),
    "streamlit-address-flag": (
        lambda port: streamlit_run(port, "--server.address=0.0.0.0"),
        {},
    ),
    "launcher-host-0.0.0.0": (launcher, {}),
}


@pytest.mark.parametrize("how", list(ON_PURPOSE), ids=list(ON_PURPOSE))
def test_serving_the_network_on_purpose_serves_other_machines(netns, tmp_path, how):
    command, env = ON_PURPOSE[how]
    port = free_port()
    url = f"http://{OTHER}:{port}/"
    result, log = probe(tmp_path, command(port), env, [url], port)
    assert result["listening"] == ["0.0.0.0"]
    shown = result["visits"][url]
    assert "Handwritten digits" in shown["titles"] and not shown["errors"], shown
    assert shown["nav_links"] == 6 and shown["auto_nav"] == 0, shown
    assert WARNING not in log and "Traceback" not in log, log
