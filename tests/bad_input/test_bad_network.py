"""Bad input from the network: how the dashboard is started, who connects, what
is uploaded.

- However the server is started (``streamlit run`` in the repo or from another
  folder, the ``digits.dashboard`` launcher, with other addresses in the user's
  config files or environment), it listens on 127.0.0.1 only. Those cases start
  real servers and read the kernel's table of listening sockets
  (``/proc/net/tcp``, ``tcp6``), then try the machine's own non-loopback
  addresses. The stray settings they plant are other *loopback* addresses
  (127.0.0.3...), so that a failure shows as a wrong address without ever
  exposing a test server to the network.
- A session from another machine is refused unless serving the network was
  asked for (AppTest, with the client's IP set; ``tests/e2e/test_loopback.py``
  does it with a real browser on a real non-loopback address).
- The launcher refuses a bad host or port with one clear message, before
  starting anything.
- Uploads: a file over the limit gets a clear message and changes nothing; an
  uploaded CSV is on disk only while it is parsed, in a private folder, whatever
  the outcome; what a session loaded from it goes when the session ends.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import weakref
from pathlib import Path

import numpy as np
import pytest
from streamlit.runtime.context import ContextProxy
from streamlit.testing.v1 import AppTest

from digits import dashboard, data
from digits.errors import ConfigError, DigitsError

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"
sys.path.insert(0, str(ROOT))  # ui.py sits beside app.py, outside the package
import ui  # noqa: E402

START_SECONDS = 60  # for a server to answer its health check (2 busy cores)
STOP_SECONDS = 20
APPTEST_SECONDS = 60  # for one script run (the first loads MNIST)
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


# -- real servers --------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode(hex_address: str) -> str:
    """/proc/net/tcp's hex address (host-order 32-bit words) as an IP string."""
    raw = bytes.fromhex(hex_address)
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    # The words are in host order; this test runs on little-endian machines.
    assert sys.byteorder == "little"
    return str(ipaddress.ip_address(b"".join(words)))


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every socket listening on TCP ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)  # the header
            for line in f:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == LISTEN and int(hex_port, 16) == port:
                    found.add(_decode(address))
    return found


def own_addresses() -> list[str]:
    """This machine's non-loopback IP addresses (possibly none)."""
    found = set()
    try:
        out = subprocess.run(
            ["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] in ("inet", "inet6"):
            found.add(fields[3].split("/")[0])
    # Without `ip`: the address a UDP socket would send from (no packet is sent).
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        s.connect(("192.0.2.1", 9))
        found.add(s.getsockname()[0])
    return sorted(
        a
        for a in found
        if not (ip := ipaddress.ip_address(a)).is_loopback and not ip.is_link_local
    )


def refuses_connection(address: str, port: int) -> bool:
    """True if nothing answers on ``address``:``port``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((address, port))
        except OSError:
            return True
        return False


@contextlib.contextmanager
def serving(command: list[str], cwd: Path, env: dict, port: int, log: Path):
    """Run ``command`` (a server) in its own process group until its health check
    answers on 127.0.0.1:``port``; kill the whole group afterwards, whatever
    happens."""
    with open(log, "ab") as out:
        server = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert server.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"no answer: {log.read_text()}"
            try:
                url = f"http://127.0.0.1:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.2)  # polling the server, not waiting on a result
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=STOP_SECONDS)


def streamlit_run(app: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        app,
        f"--server.port={port}",
        "--server.headless=true",
        "--server.fileWatcherType=none",
    ]


def launcher(port: int) -> list[str]:
    code = (
        "import sys; from digits.dashboard import launch; "
        f"sys.exit(launch(port={port}, headless=True))"
    )
    return [sys.executable, "-c", code]


def write_config(folder: Path, address: str) -> None:
    (folder / ".streamlit").mkdir(parents=True, exist_ok=True)
    (folder / ".streamlit" / "config.toml").write_text(
        f'[server]\naddress = "{address}"\n'
    )


# Each: (command, run from the repo?, stray settings: global config, config in
# the folder it runs from, STREAMLIT_SERVER_ADDRESS). The strays are loopback
# addresses other than 127.0.0.1, so a wrong winner is visible but harmless.
STARTS = {
    "streamlit-run-app.py-in-the-repo": ("repo", True, None, None, None),
    "streamlit-run-abs-path-from-another-folder": ("abs", False, None, None, None),
    "streamlit-run-from-a-folder-whose-config-says-otherwise": (
        "abs",
        False,
        "127.0.0.3",
        "127.0.0.4",
        None,
    ),
    "launcher-from-another-folder": ("launcher", False, None, None, None),
    "launcher-over-STREAMLIT_SERVER_ADDRESS-and-configs": (
        "launcher",
        False,
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
    ),
}


@pytest.mark.parametrize("how", list(STARTS), ids=list(STARTS))
def test_server_listens_on_loopback_only(how, tmp_path):
    kind, in_repo, global_address, folder_address, env_address = STARTS[how]
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    if global_address:
        write_config(home, global_address)
    if folder_address:
        write_config(elsewhere, folder_address)
    env = {
        **os.environ,
        "HOME": str(home),  # no ~/.streamlit of the person running the tests
        "DIGITS_RUNS_DIR": str(tmp_path / "runs"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("STREAMLIT_SERVER_ADDRESS", None)
    env.pop(dashboard.ALLOW_NETWORK_ENV, None)
    if env_address:
        env["STREAMLIT_SERVER_ADDRESS"] = env_address
    port = free_port()
    command = {
        "repo": streamlit_run("app.py", port),
        "abs": streamlit_run(str(APP), port),
        "launcher": launcher(port),
    }[kind]
    cwd = ROOT if in_repo else elsewhere
    with serving(command, cwd, env, port, tmp_path / "server.log"):
        assert listening_addresses(port) == {"127.0.0.1"}
        for address in own_addresses():
            assert refuses_connection(address, port), address
        assert not refuses_connection("127.0.0.1", port)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


# -- who connects ----------------------------------------------------------------------


@pytest.fixture
def client_from(monkeypatch):
    """Make ``st.context.ip_address`` report ``ip`` (AppTest has no real client).

    Also clears the network opt-ins this process may have inherited."""
    monkeypatch.delenv(dashboard.ALLOW_NETWORK_ENV, raising=False)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "pytest"])

    def set_ip(ip: str | None) -> None:
        monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: ip))

    return set_ip


def run_app() -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=APPTEST_SECONDS)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    return app


def refused(app: AppTest) -> bool:
    """The session shows only the refusal: no page of the dashboard ran."""
    titles = [t.value for t in app.title]
    errors = " ".join(e.value for e in app.error)
    if "another machine" in errors:
        assert titles == ["digits"], titles
        assert not app.metric and not app.selectbox and not app.button
        assert not app.get("page_link")  # no sidebar: no way to another page
        return True
    assert "Handwritten digits" in titles, titles
    return False


# (client IP, DIGITS_ALLOW_NETWORK, the server's command line after "streamlit run
# app.py", refused?)
CLIENTS = {
    "lan-ipv4-refused": ("192.0.2.7", None, [], True),
    "lan-ipv6-refused": ("2001:db8::7", None, [], True),
    "ipv4-mapped-lan-refused": ("::ffff:192.0.2.7", None, [], True),
    "opt-in-must-be-1-not-yes": ("192.0.2.7", "yes", [], True),
    "loopback-address-flag-is-no-opt-in": (
        "192.0.2.7",
        None,
        ["--server.address=127.0.0.1"],
        True,
    ),
    "flag-after-double-dash-is-the-scripts": (
        "192.0.2.7",
        None,
        ["--", "--server.address", "0.0.0.0"],
        True,
    ),
    "loopback-alias-served": ("127.0.0.2", None, [], False),
    "ipv4-mapped-loopback-served": ("::ffff:127.0.0.1", None, [], False),
    "lan-served-with-DIGITS_ALLOW_NETWORK=1": ("192.0.2.7", "1", [], False),
    "lan-served-with-an-explicit-address-flag": (
        "192.0.2.7",
        None,
        ["--server.address", "0.0.0.0"],
        False,
    ),
}


@pytest.mark.parametrize("case", list(CLIENTS), ids=list(CLIENTS))
def test_sessions_from_other_machines_need_an_opt_in(
    case, client_from, monkeypatch, runs
):
    ip, allow, flags, expect_refused = CLIENTS[case]
    client_from(ip)
    if allow is not None:
        monkeypatch.setenv(dashboard.ALLOW_NETWORK_ENV, allow)
    argv = [sys.executable, "-m", "streamlit", "run", "app.py", *flags]
    monkeypatch.setattr(sys, "orig_argv", argv)
    app = run_app()
    assert refused(app) == expect_refused
    if expect_refused:
        message = app.error[0].value
        assert ip in message and "digits dashboard --host 0.0.0.0" in message


PAGES = ["train", "evaluate", "draw", "inspect", "experiments"]  # besides Home


@pytest.mark.parametrize("page", PAGES)
def test_a_refused_session_is_refused_on_every_page(page, client_from, runs):
    client_from("192.0.2.7")
    # Its first request is the page's own URL (say /train, after a restart)...
    app = AppTest.from_file(str(APP), default_timeout=APPTEST_SECONDS)
    app.switch_page(f"pages/{page}.py")
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    assert refused(app)
    # ...or it moves on from Home.
    app = run_app()
    app.switch_page(f"pages/{page}.py")
    app.run()
    assert refused(app)


@pytest.mark.parametrize(
    ("address", "allowed", "warns"),
    [
        (None, False, True),  # Streamlit's default: every interface
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("192.0.2.2", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
    ],
    ids=lambda v: repr(v),
)
def test_the_server_log_warns_of_a_wide_address_nobody_asked_for(
    address, allowed, warns
):
    warning = dashboard.exposure_warning(address, allowed)
    assert (warning is not None) == warns
    if warns:
        assert "STREAMLIT_SERVER_ADDRESS" in warning and "refused" in warning


# -- the launcher's bad input ----------------------------------------------------


@pytest.fixture
def no_server(monkeypatch):
    """Fail if the launcher starts a server: bad input must stop it before."""

    def popen(*args, **kwargs):
        raise AssertionError(f"a server was started: {args}")

    monkeypatch.setattr(dashboard.subprocess, "Popen", popen)


@pytest.mark.parametrize("port", [0, -1, 65536, 100_000, "8501", True, 80.5])
def test_launcher_refuses_a_bad_port(port, no_server):
    with pytest.raises(ConfigError) as err:
        dashboard.launch(port=port, headless=True)
    message = str(err.value)
    assert repr(port) in message and "1 to 65535" in message


@pytest.mark.parametrize(
    "host", ["", "my laptop", "http://example.org", "0.0.0.0; rm -rf ~", "-v"]
)
def test_launcher_refuses_a_host_that_is_not_an_address(host, no_server):
    with pytest.raises(ConfigError) as err:
        dashboard.launch(host=host, port=free_port(), headless=True)
    assert repr(host) in str(err.value)
    assert "not an IP address or a host name" in str(err.value)


def test_launcher_refuses_an_address_of_another_machine(no_server):
    # 203.0.113.0/24 is reserved for documentation: no machine has it.
    with pytest.raises(ConfigError, match=r"203\.0\.113\.7 is not an address of this"):
        dashboard.launch(host="203.0.113.7", port=free_port(), headless=True)


def test_launcher_refuses_a_port_in_use(no_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            dashboard.launch(port=port, headless=True)
    assert f"Port {port} on 127.0.0.1 is already in use" in str(err.value)
    assert "--port" in str(err.value)


def test_launcher_without_app_py_says_to_use_a_checkout(no_server, monkeypatch):
    monkeypatch.setattr(dashboard, "APP", ROOT / "no-such-folder" / "app.py")
    with pytest.raises(DigitsError, match=r"app\.py is not beside the digits package"):
        dashboard.launch(port=free_port(), headless=True)


@pytest.mark.parametrize(
    ("host", "opted_in"),
    [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True), ("::", True)],
)
def test_launcher_passes_its_address_as_a_flag_and_opts_in_only_when_wide(
    host, opted_in
):
    command = dashboard.command(host, 8600, headless=True)
    assert command[1:5] == ["-m", "streamlit", "run", str(APP)]
    assert f"--server.address={host}" in command
    assert f"--server.maxUploadSize={dashboard.MAX_UPLOAD_MB}" in command
    env = dashboard.child_environment(host, {"PATH": "/usr/bin"})
    assert (env.get(dashboard.ALLOW_NETWORK_ENV) == "1") == opted_in
    # The server started so would accept other machines exactly when opted in.
    assert dashboard.network_allowed(env, command) == opted_in


def test_config_file_serves_loopback_with_the_upload_limit_the_pages_check():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["maxUploadSize"] == dashboard.MAX_UPLOAD_MB
    assert ui.CSV_LIMIT_MB == dashboard.MAX_UPLOAD_MB


# -- uploads ---------------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The temporary folder the app may use, empty; checked after each case."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def csv_session() -> AppTest:
    """A fresh session on Home with "CSV upload" chosen."""
    app = run_app()
    app.selectbox(key=ui.DATASET_KEY).select(ui.CSV_CHOICE).run()
    assert not app.exception
    return app


@pytest.fixture
def home(client_from, runs) -> AppTest:
    """A session on Home from a browser on this computer, CSV upload chosen."""
    client_from(None)
    return csv_session()


def csv_bytes(rows: int = 60, side: int = 4, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    lines = ["label," + ",".join(f"pixel{i}" for i in range(side * side))]
    for n in range(rows):
        pixels = rng.integers(0, 256, side * side)
        lines.append(f"{n % 3}," + ",".join(map(str, pixels)))
    return "\n".join(lines).encode()


def metrics(app: AppTest) -> dict:
    return {m.label: m.value for m in app.metric}


@pytest.fixture
def csv_reads(monkeypatch) -> list[tuple[str, int]]:
    """Each CSV parse: the name it was given and how many bytes."""
    seen: list[tuple[str, int]] = []
    real = data.parse_csv

    def spy(raw, name, *args, **kwargs):
        seen.append((name, len(raw)))
        return real(raw, name, *args, **kwargs)

    monkeypatch.setattr(data, "parse_csv", spy)
    return seen


def test_csv_upload_is_parsed_from_memory_once(home, private_tmp, csv_reads):
    """The upload's bytes are parsed as they are: no file is written for it,
    and reruns reuse the dataset instead of parsing again."""
    content = csv_bytes()
    home.file_uploader[0].upload("tiny.csv", content, "text/csv").run()
    assert not home.exception and not home.error
    assert metrics(home)["Image size"] == "4x4"
    for _ in range(2):  # reruns (any widget) reuse what was read
        home.run()
    assert csv_reads == [("tiny.csv", len(content))]
    assert list(private_tmp.iterdir()) == []
    assert not Path(home.session_state[ui.CSV_KEY]).exists()  # a name, not a file


def test_bad_csv_upload_names_the_file_and_leaves_nothing(home, private_tmp):
    home.file_uploader[0].upload("broken.csv", b"label,a,b\n1,2,x\n", "text/csv")
    home.run()
    assert not home.exception
    message = " ".join(e.value for e in home.error)
    assert "broken.csv" in message and str(private_tmp) not in message
    assert list(private_tmp.iterdir()) == []
    assert metrics(home)["Training images"] == "60,000"  # still MNIST


def test_csv_over_the_limit_is_refused_before_it_is_read(home, private_tmp, csv_reads):
    big = b"0" * ((ui.CSV_LIMIT_MB + 1) * 2**20)
    home.file_uploader[0].upload("huge.csv", big, "text/csv").run()
    assert not home.exception
    message = " ".join(e.value for e in home.error)
    assert f"huge.csv is {ui.CSV_LIMIT_MB + 1}.0 MB" in message
    assert f"over the {ui.CSV_LIMIT_MB} MB limit" in message
    assert csv_reads == [] and list(private_tmp.iterdir()) == []
    assert metrics(home)["Training images"] == "60,000"  # still MNIST


def test_photo_over_the_limit_is_refused_on_draw(client_from, runs, private_tmp):
    client_from(None)
    app = run_app()
    app.switch_page("pages/draw.py")
    app.run()
    app.segmented_control(key="draw-source").set_value("Upload").run()
    big = b"\x89PNG" + b"0" * (ui.PHOTO_LIMIT_MB * 2**20)
    app.file_uploader[0].upload("seven.png", big, "image/png").run()
    assert not app.exception
    message = " ".join(e.value for e in app.error)
    assert f"seven.png is {ui.PHOTO_LIMIT_MB}.0 MB" in message
    assert f"over the {ui.PHOTO_LIMIT_MB} MB limit" in message
    assert not [m for m in app.metric if m.label == "Prediction"]
    assert list(private_tmp.iterdir()) == []


def test_an_uploaded_csv_is_this_sessions_only_and_goes_with_it(
    client_from, runs, private_tmp
):
    client_from(None)
    session = csv_session()
    session.file_uploader[0].upload("tiny.csv", csv_bytes(), "text/csv").run()
    assert metrics(session)["Image size"] == "4x4"
    gone = weakref.ref(session.session_state[ui.CSV_DATA_KEY].x_train)
    # Another session (browser) does not see it.
    other = csv_session()
    assert metrics(other)["Image size"] == "28x28"
    assert "No CSV uploaded yet" in " ".join(i.value for i in other.info)
    # The session ends: nothing else (no cache) holds the images.
    del session
    gc.collect()
    assert gone() is None
