"""digits as a user installs it: the wheel, its metadata, the locks, and a fresh
virtual environment where `pip install <wheel>[app]` gives a `digits` command that
prints its version, reads a real MNIST digit and serves the dashboard.

The wheel is built from a copy of the working tree (the files git tracks or would
track), so that nothing left in the checkout's build/ folder slips into it.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

import digits
from digits import data
from digits.cli import build_parser, cmd_dashboard
from digits.dashboard import find_app

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements-dev.txt"  # the whole environment
RUNTIME_LOCK = ROOT / "requirements.txt"  # the same without the dev group
DASHBOARD_FILES = ["app.py", "ui.py", ".streamlit/config.toml"]
HEALTH_TIMEOUT_S = 90  # for `digits app` to answer; it takes about 1-2 s
STOP_TIMEOUT_S = 20
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """{canonical name: (version, number of hashes)} of a lock file."""
    text = path.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if match := PIN.match(line):
            pins[canonicalize_name(match[1])] = (match[2], line.count("--hash=sha256:"))
    return pins


def tracked_files() -> list[str]:
    """The checkout's files that git tracks, or would (untracked, not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(f for f in listing.split("\0") if f and (ROOT / f).is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out],
        cwd=source,
        capture_output=True,
        check=True,
    )
    (built,) = out.glob("digits-*.whl")
    return built


# -- the wheel ---------------------------------------------------------------------


def test_wheel_holds_the_whole_package_and_the_dashboard(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = [f for f in tracked_files() if f.startswith("digits/")]
    assert package and not [f for f in package if f not in names]
    dashboard = [
        *DASHBOARD_FILES,
        *(f for f in tracked_files() if f.startswith("pages/")),
    ]
    missing = [f for f in dashboard if f"digits_app/{f}" not in names]
    assert not missing, f"dashboard files not in the wheel: {missing}"
    # digits/ itself holds nothing of the dashboard's, and nothing else ships.
    assert not [n for n in names if n.startswith("digits/") and "streamlit" in n]
    tops = {n.split("/")[0] for n in names}
    assert tops == {"digits", "digits_app", f"digits-{digits.__version__}.dist-info"}


def test_wheel_metadata_has_version_readme_licence_and_dependencies(wheel):
    info = f"digits-{digits.__version__}.dist-info"
    archive = zipfile.ZipFile(wheel)
    meta = email.message_from_bytes(archive.read(f"{info}/METADATA"))
    assert meta["Version"] == digits.__version__
    assert meta["License-Expression"] == "MIT AND CC-BY-SA-3.0"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# digits")
    assert "MIT License" in archive.read(f"{info}/licenses/LICENSE").decode()
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {canonicalize_name(r.name) for r in requires if not r.marker}
    assert {"numpy", "scikit-learn", "pillow", "platformdirs"} <= core
    assert "streamlit" not in core  # only the app extra brings it
    assert set(meta.get_all("Provides-Extra")) >= {"app", "cluster", "export"}
    assert (
        "digits = digits.cli:main" in archive.read(f"{info}/entry_points.txt").decode()
    )


def test_version_is_written_once():
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "digits.__version__"


def test_the_digits_package_never_imports_streamlit():
    """Every module of digits/ imported in a fresh interpreter: no streamlit."""
    code = (
        "import importlib, pkgutil, sys, digits\n"
        "for m in pkgutil.walk_packages(digits.__path__, 'digits.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["app", "--host", "0.0.0.0", "--port", "9000"],
        ["app", "--server.address", "0.0.0.0", "--server.port", "9000"],
        ["dashboard", "--server.address=0.0.0.0", "--port=9000"],
    ],
)
def test_app_takes_host_and_port_as_streamlit_run_does(argv):
    args = build_parser().parse_args(argv)
    assert (args.host, args.port, args.func) == ("0.0.0.0", 9000, cmd_dashboard)


def test_app_serves_this_computer_only_by_default():
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port) == ("127.0.0.1", 8501)


def test_app_finds_the_dashboard_of_the_checkout_first():
    assert find_app() == ROOT / "app.py"


# -- the locks ---------------------------------------------------------------------


def declared() -> list[Requirement]:
    """Every requirement pyproject.toml names: runtime, extras and the dev group."""
    project = PYPROJECT["project"]
    texts = [*project["dependencies"], *PYPROJECT["dependency-groups"]["dev"]]
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [Requirement(t) for t in texts]


def test_lock_pins_every_package_with_hashes():
    for path in (LOCK, RUNTIME_LOCK):
        pins = locked(path)
        assert len(pins) > 40
        assert all(hashes for _, hashes in pins.values()), path.name
        lines = path.read_text().replace("\\\n", " ").splitlines()
        options = [line for line in lines if line.startswith("-")]
        # No '-e .' nor any path relative to the folder pip is run from.
        assert options in ([], ["--find-links /opt/wheels"]), options


def test_lock_satisfies_pyproject_and_the_runtime_lock_agrees_with_it():
    pins = locked(LOCK)
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {LOCK.name}: run scripts/lock"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} has {name}=={version}, pyproject.toml asks {requirement}"
        )
    runtime = locked(RUNTIME_LOCK)
    assert {n: v for n, (v, _) in runtime.items()} == {n: pins[n][0] for n in runtime}
    for name in ("pytest", "ruff", "torch", "onnxruntime"):
        assert canonicalize_name(name) not in runtime
    assert pins["torch"][0] == "2.13.0+cpu"


# -- a fresh virtual environment -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health(port: int) -> str | None:
    url = f"http://127.0.0.1:{port}/_stcore/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return None


@pytest.mark.slow
def test_fresh_venv_installs_the_wheel_and_runs_digits(wheel, tmp_path):
    """`pip install <wheel>[app]` in a new venv (the lock's versions as constraints,
    so it installs from the local index), then `digits --version`, `digits predict
    default <a real MNIST 7>` and `digits app` answering on /_stcore/health."""
    started = time.monotonic()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, command = env_dir / "bin" / "python", env_dir / "bin" / "digits"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, (v, _) in locked(LOCK).items()))
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-compile", "-c", constraints,
         f"{wheel}[app]"],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    installed = time.monotonic()

    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DIGITS_"))
    }
    env |= {
        "HOME": str(home),  # no ~/.streamlit of the person running the tests
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "DIGITS_DATA_DIR": str(data.data_dir()),
        "DIGITS_RUNS_DIR": str(tmp_path / "runs"),
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=home, env=env, capture_output=True, text=True, timeout=300
        )

    where = run(str(python), "-c", "import digits; print(digits.__file__)")
    assert where.stdout.startswith(str(env_dir)), where  # not the checkout

    version = run(str(command), "--version")
    assert version.returncode == 0, version.stderr
    assert digits.__version__ in version.stdout

    mnist = data.load_dataset("mnist")
    image = home / "digit.png"
    Image.fromarray(mnist.x_test[0]).save(image)
    predicted = run(str(command), "predict", "default", str(image))
    assert predicted.returncode == 0, predicted.stderr
    assert re.search(rf"\b{mnist.y_test[0]}\b", predicted.stdout), predicted.stdout

    port = free_port()
    log = (tmp_path / "app.log").open("w")
    server = subprocess.Popen(
        [command, "app", "--port", str(port), "--headless"],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while health(port) != "ok" and time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "app.log").read_text()
            time.sleep(0.25)
        assert health(port) == "ok", (tmp_path / "app.log").read_text()
        answered = time.monotonic()
        server.send_signal(signal.SIGTERM)  # digits app passes it on to Streamlit
        server.wait(timeout=STOP_TIMEOUT_S)
        assert health(port) is None
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    print(
        f"\nfresh venv: install {installed - started:.1f} s, "
        f"commands and app {answered - installed:.1f} s, "
        f"in all {time.monotonic() - started:.1f} s"
    )
