"""Start the dashboard on this computer only: ``digits dashboard``.

``launch`` runs ``python -m streamlit run .../app.py`` in a child process with
the server's address, port and upload limit given as command-line flags. The
``app.py`` is the checkout's, beside this package, or else the installed wheel's:
the wheel carries ``app.py``, ``ui.py``, ``pages/`` and ``.streamlit/`` as the
top-level package ``digits_app`` (see pyproject.toml), found here without being
imported.
Streamlit ranks its flags above every config file and every ``STREAMLIT_*``
environment variable, so the dashboard listens on 127.0.0.1 unless ``host`` says
otherwise, whatever a user's ``~/.streamlit/config.toml`` or environment holds.
(``streamlit run app.py`` itself reads ``.streamlit/config.toml`` beside
``app.py``, which also says 127.0.0.1.)

Serving other machines is an explicit choice: a ``host`` that is not a loopback
address also sets ``DIGITS_ALLOW_NETWORK=1`` for the app. Every page (through
``ui.page_header``, its first call) refuses sessions from other machines unless
the server was started that way, or with an explicit ``--server.address`` flag;
``network_allowed`` and ``refuse_client`` are the rules it applies, kept here
without Streamlit so that they are tested alone.

This module never imports streamlit: the ``digits`` package doesn't.
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from digits.errors import ConfigError, DigitsError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
# The largest upload (MB), a CSV or a photo: the server's `server.maxUploadSize`
# (.streamlit/config.toml says the same) and the pages' own check of each file.
MAX_UPLOAD_MB = 50
ALLOW_NETWORK_ENV = "DIGITS_ALLOW_NETWORK"  # "1": sessions from other machines
APP_PACKAGE = "digits_app"  # the dashboard's files, in an installed wheel


def find_app() -> Path:
    """The dashboard's entry file: the checkout's ``app.py`` beside the ``digits``
    package, else the one installed as ``digits_app``, else the checkout's path
    (missing: ``launch`` says so). Looks the package up, never imports it."""
    checkout = Path(__file__).resolve().parent.parent / "app.py"
    if checkout.is_file():
        return checkout
    try:
        spec = importlib.util.find_spec(APP_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec and spec.submodule_search_locations) or []:
        if (Path(folder) / "app.py").is_file():
            return Path(folder) / "app.py"
    return checkout


APP = find_app()
README_SECTION = 'the README\'s "Serving a classroom on the local network"'
STOP_SECONDS = 10  # for the server to end after Ctrl-C or SIGTERM

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_ADDRESS_FLAG = "--server.address"

REFUSAL = (
    "This dashboard serves only the computer it runs on, and you are connecting "
    "from another machine ({client}). Whoever runs it can open it to the local "
    "network on purpose: `digits dashboard --host 0.0.0.0` (see "
    f"{README_SECTION})."
)


def is_loopback(address: str | None) -> bool:
    """True if ``address`` (a server's bind address or a client's IP) stays on
    this computer: 127.0.0.0/8, ::1 (also IPv4-mapped), "localhost", a Unix socket.

    An empty address is False: Streamlit then listens on every interface. A host
    name other than localhost is False too: it may resolve to anything.
    """
    if not address:
        return False
    text = address.strip()
    if text.lower() == "localhost" or text.startswith("unix://"):
        return True
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def flag_address(argv: Sequence[str]) -> str | None:
    """The value of the last ``--server.address`` flag in a ``streamlit run``
    command line (``--server.address X`` or ``--server.address=X``), or None.

    Arguments after ``--`` belong to the script, not to Streamlit.
    """
    found = None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == _ADDRESS_FLAG and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(_ADDRESS_FLAG + "="):
            found = arg.split("=", 1)[1]
    return found


def network_allowed(
    environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> bool:
    """True if whoever started the server chose to serve other machines.

    That is ``DIGITS_ALLOW_NETWORK=1`` (``launch`` sets it for a wide ``host``), or
    a ``--server.address`` flag with a non-loopback address on the server's own
    command line (``sys.orig_argv``: Streamlit rewrites ``sys.argv``). A wide
    address that comes from a config file or a ``STREAMLIT_SERVER_ADDRESS`` left
    in the environment is not a choice made for this dashboard, so it does not
    count.
    """
    environ = os.environ if environ is None else environ
    argv = getattr(sys, "orig_argv", sys.argv) if argv is None else argv
    if environ.get(ALLOW_NETWORK_ENV, "").strip() == "1":
        return True
    flag = flag_address(argv)
    return flag is not None and not is_loopback(flag)


def refuse_client(client_ip: str | None, allowed: bool) -> bool:
    """True if a session from ``client_ip`` must be refused.

    ``client_ip`` is Streamlit's ``st.context.ip_address``: None for a browser on
    this computer. Any other machine is refused unless ``allowed``
    (``network_allowed``): its IP proves the server is reachable from the network.
    """
    return client_ip is not None and not is_loopback(client_ip) and not allowed


def exposure_warning(server_address: str | None, allowed: bool) -> str | None:
    """The server log's warning when the server listens beyond this computer
    without the user's say-so (a stray setting); None when all is as chosen."""
    if allowed or is_loopback(server_address):
        return None
    where = f"address {server_address!r}" if server_address else "every interface"
    return (
        f"digits: warning: the dashboard listens on {where}, which other machines "
        "may reach, but serving them was not asked for, so their sessions are "
        "refused. Check STREAMLIT_SERVER_ADDRESS and ~/.streamlit/config.toml, or "
        f"serve the network on purpose: see {README_SECTION}."
    )


def check_host(host: str) -> str:
    """``host`` stripped, if it is an IP address or a host name; else ConfigError."""
    text = str(host).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.match(text):
            raise ConfigError(
                f"--host {host!r} is not an IP address or a host name: use "
                f"{DEFAULT_HOST} (this computer only, the default) or 0.0.0.0 "
                "(every network interface)."
            ) from None
    return text


def check_port(port: int) -> int:
    """``port`` if it is a TCP port number (1-65535); else ConfigError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(
            f"--port {port!r} is not a TCP port: use a number from 1 to 65535 "
            f"(default {DEFAULT_PORT})."
        )
    return port


def check_free(host: str, port: int) -> None:
    """ConfigError unless this process could listen on ``host``:``port`` now.

    Streamlit would fail too, with a traceback or a log line; this says what to
    do. (Binding with SO_REUSEADDR, as Streamlit does, ignores sockets that are
    only closing.)
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(
            f"--host {host!r} is not a known host name ({err.strerror}): use an "
            f"IP address of this computer, {DEFAULT_HOST} or 0.0.0.0."
        ) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"Port {port} on {host} is already in use (another dashboard?): "
                    "stop it, or choose another port with --port."
                ) from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    f"--host {host} is not an address of this computer: use "
                    f"{DEFAULT_HOST}, 0.0.0.0 or one of its own IP addresses."
                ) from None
            if err.errno == errno.EACCES:
                raise ConfigError(
                    f"Not allowed to listen on port {port} (ports below 1024 need "
                    f"administrator rights): choose e.g. --port {DEFAULT_PORT}."
                ) from None
            raise ConfigError(
                f"Cannot listen on {host}:{port}: {err.strerror}."
            ) from None


def command(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, headless: bool = False
) -> list[str]:
    """The ``python -m streamlit run`` command line that serves the dashboard.

    Every server setting that matters for safety is a flag, so no config file or
    environment variable can change it.
    """
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        f"--server.address={host}",
        f"--server.port={port}",
        f"--server.maxUploadSize={MAX_UPLOAD_MB}",
        f"--server.headless={str(headless).lower()}",
        # Streamlit's first-run prompt for an email address would stop `digits
        # app` in a fresh environment until someone answers it.
        "--server.showEmailPrompt=false",
        "--browser.gatherUsageStats=false",
        # As .streamlit/config.toml says: no full collection after every run.
        "--runner.postScriptGC=false",
    ]


def child_environment(
    host: str, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The server's environment: ours, plus the network opt-in for a wide host."""
    env = dict(os.environ if environ is None else environ)
    if not is_loopback(host):
        env[ALLOW_NETWORK_ENV] = "1"
    return env


def launch(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, headless: bool = False
) -> int:
    """Serve the dashboard until Ctrl-C (or SIGTERM); returns the server's status.

    host : the address to listen on; 127.0.0.1 serves this computer only. Any
        other (0.0.0.0: every interface) serves the network: see the README's
        "Serving a classroom on the local network" for what that exposes.
    port : the TCP port (1-65535).
    headless : True to not open a browser.

    Raises ConfigError for a bad host or port, or one that cannot be used now,
    and DigitsError if Streamlit or ``app.py`` is missing, before starting
    anything.
    """
    host, port = check_host(host), check_port(port)
    if not APP.is_file():
        raise DigitsError(
            f"The dashboard's app.py is not beside the digits package ({APP} is "
            f"missing), nor installed as {APP_PACKAGE}: pip install 'digits[app]', "
            "or run from a checkout of the project."
        )
    if importlib.util.find_spec("streamlit") is None:
        raise DigitsError(
            "Streamlit is not installed: pip install 'digits[app]' (in a checkout: "
            "pip install -r requirements.txt)"
        )
    check_free(host, port)
    if is_loopback(host):
        print(f"digits: serving this computer only, on {host}:{port}", file=sys.stderr)
    else:
        print(
            f"digits: serving the network on {host}:{port}: anyone who can reach "
            f"this port can use the dashboard, with no login (see {README_SECTION})",
            file=sys.stderr,
        )
    server = subprocess.Popen(
        command(host, port, headless=headless), env=child_environment(host)
    )

    def forward(signum, frame):  # SIGTERM: stop the server too, not orphan it
        server.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if main else None
    try:
        return server.wait()
    except KeyboardInterrupt:
        # The terminal sent Ctrl-C to the server as well: let it finish cleanly.
        try:
            server.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait()
        return 0
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
