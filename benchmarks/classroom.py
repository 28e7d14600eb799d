"""The classroom load test (issue 21): a whole class on one dashboard at once.

Starts one dashboard server (``streamlit run app.py`` on 127.0.0.1, with a
temporary runs folder, so ./runs is never touched) and, for ``--workers N`` > 0,
a Dask cluster on 127.0.0.1: ``dask scheduler`` and N ``dask worker`` processes
at a lower CPU priority (``nice -n 10``) than the server, whose address the
server gets as ``DIGITS_SCHEDULER``. ``--workers 0`` starts no cluster: the
server trains in its own queue of training slots (``digits.slots``), as today.

Then ``--students`` sessions arrive over ``--arrive-over`` seconds, each doing
what a student does: open Home, go to Train, pick the ``quick`` preset and press
Start, go to Draw and draw a digit every ``--draw-every`` seconds (a 1 or a 7,
cleared after each reading), now and then looking at another page and back.
Every session keeps drawing until every student's model is saved (or
``--timeout``). A student is one of two kinds of client:

- ``--clients ws`` (the default): a websocket client that speaks Streamlit's own
  protocol to the server (``classroom_ws.py``, which says how and what it
  measures), at the cost of a few milliseconds of the harness's CPU per page,
  with ``--browser-students`` of the class (default 2) Chromium tabs among them,
  so that what a person sees in a browser is measured under the class's load
  too. Both populations' latencies are reported apart. (30 Chromium tabs need
  about 0.7 CPU-s per drawing each, ~2.7 of this machine's 2 cores: they starve
  the server they measure, and such a run does not finish here.)
- ``--clients browser``: every student a Chromium browser context (spread over
  ``--browsers`` Chromium processes) driven with Playwright.

Measured (for a websocket student, in the harness's clock from the rerun sent,
see classroom_ws.py; for a Chromium one as follows):

- page render: from the click on a sidebar link to the new page's script having
  finished (its title shown, Streamlit idle), in the harness's clock;
- drawing to prediction: from the stroke's mouse-up to the first prediction
  shown, in the page's own clock (the canvas is cleared before each drawing, so
  the first prediction shown is the new one); beside it the page's own "Server
  time" (preprocessing and the models) and when the Draw page finished;
- each training job, from the sidebar's progress of the student's tab (every
  page shows it, redrawn every second): queue wait, from the click on Start to
  the first percentage shown (the job running); time on the page, from then to
  "Last run: NAME"; and the run's own ``train_seconds`` from the run store;
  the total, from the first Start to the last run shown saved;
- errors: exceptions and error boxes on the pages, JavaScript errors, steps
  that timed out, jobs that ended without a run; lost runs: runs a page named
  as saved that the run store does not list. Both must be 0;
- CPU seconds over the load (psutil, sampled twice a second): the load
  generator (this harness, which runs the websocket students, and apart from
  it Playwright's driver and the Chromium processes), the
  server (its threads at normal priority, which draw pages and predict, apart
  from its training threads, which run at a lower priority), the scheduler and
  the workers; each as a share of elapsed time x cores. The machine's own busy
  share (everyone's, from /proc/stat) says how quiet it was.

    DIGITS_DATA_DIR=../shared/data python benchmarks/classroom.py --workers 0 1 2

(30 students, 28 of them websocket clients and 2 Chromium tabs.)

Each worker count gets a fresh server (and cluster); the results go side by side
into one Markdown table (printed) and a JSON file (``--json``). Every process
started here (server, scheduler, workers, browsers) is ended on exit, on Ctrl-C
and on errors. A dask worker gets one thread (``--nthreads 1``): a CNN job
already trains on two threads of its own (batch halves), so one job per worker
is one of today's training slots (two cores each), and a worker never runs two
jobs against each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's digits, not an installed one
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # the end-to-end tests' driver

from appdriver import (  # noqa: E402
    CANVAS,
    CHROMIUM,
    CHROMIUM_ARGS,
    EXCEPTION,
    IDLE,
    INK_LAYER,
    NAV_LINK,
    ONE,
    PAGE_MS,
    PAGE_PATHS,
    PREDICTION,
    SEVEN,
    STROKE_ATTEMPTS,
    VIEWPORT,
    Server,
    free_port,
)
from classroom_ws import until, ws_student  # noqa: E402

SCHEDULER_ENV = "DIGITS_SCHEDULER"  # the lead's setting: train on this cluster
WORKER_NICENESS = 10  # as the server's own training threads (digits.training_job)
ERROR_BOX = "[data-testid=stAlertContentError]"
RUNNING = "[data-testid=stApp][data-test-script-state=running]"
CPU_SAMPLE_SECONDS = 0.5
TOUR = ("Train", "Home", "Evaluate")  # pages looked at between drawings, in turn
CLUSTER_START_SECONDS = 120
POLL_MS = 100  # how often in-page waits check their condition
JITTER = 0.04  # each point of a stroke moves by up to this fraction of the canvas

# In every page, before Streamlit's own scripts: when the last mouse-up happened,
# when a prediction first showed after it, and when the page's script finished
# after it; and this tab's training job as the sidebar shows it (every page
# draws it, redrawn every second): when it was first shown waiting, running
# (a percentage), saved ("Last run: NAME"), or gone without a run. Wall-clock
# milliseconds (Date.now), to set beside the harness's.
PAGE_TIMERS = (
    """
window.__draw = {up: null, running: null, shown: null, idle: null};
document.addEventListener("mouseup", () => {
  window.__draw = {up: Date.now(), running: null, shown: null, idle: null};
}, true);
new MutationObserver(() => {
  const d = window.__draw;
  if (d.up === null || d.idle !== null) return;
  if (d.running === null && document.querySelector(RUNNING)) d.running = Date.now();
  if (d.shown === null && document.querySelector(PREDICTION)) d.shown = Date.now();
  if (d.shown !== null && document.querySelector(IDLE)) d.idle = Date.now();
}).observe(document, {childList: true, subtree: true, characterData: true,
                      attributes: true, attributeFilter: ["data-test-script-state"]});
// Kept in the tab's sessionStorage: a reload (after a blank page) keeps it.
window.__job = JSON.parse(sessionStorage.getItem("__job")) ||
  {waiting: null, running: null, done: null, name: null, gone: null};
(() => {
  let missing = 0;
  setInterval(() => {
    const j = window.__job;
    sessionStorage.setItem("__job", JSON.stringify(j));
    if (j.done !== null || j.gone !== null) return;
    const side = document.querySelector("[data-testid=stSidebar]");
    if (!side) return;
    const now = Date.now();
    const saved = [...side.querySelectorAll("[data-testid=stCaptionContainer]")]
      .map(c => c.textContent.match(/Last run: ([\\w.-]+)/)).find(m => m);
    const bar = side.querySelector("[data-testid=stProgress]");
    if (saved) {
      j.done = now; j.name = saved[1];
      if (j.running === null) j.running = now;
    } else if (bar) {
      missing = 0;
      if (/\\d+%/.test(bar.textContent)) { if (j.running === null) j.running = now; }
      else if (j.waiting === null) j.waiting = now;
    } else if (j.waiting !== null || j.running !== null) {
      if (++missing >= 150) j.gone = now;  // 30 s without progress or a run
    }
  }, 200);
})();
""".replace("PREDICTION", json.dumps(PREDICTION))
    .replace("IDLE", json.dumps(IDLE))
    .replace("RUNNING", json.dumps(RUNNING))
)

# The text of every error shown: exceptions and st.error boxes.
ERROR_TEXTS = f"""() => [...document.querySelectorAll(
  {json.dumps(f"{EXCEPTION}, {ERROR_BOX}")})].map(e => e.innerText.trim())"""

HAS_INK = """c => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] > 128) return true;
  return false;
}"""

SERVER_TIME = re.compile(r"preprocessing (\d+) ms, \d+ models (\d+) ms")


# -- processes ----------------------------------------------------------------------


def end_group(process: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM to ``process``'s process group, SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


class Cluster:
    """``dask scheduler`` and ``workers`` niced ``dask worker`` processes on
    127.0.0.1, each in its own process group, logging into ``folder``."""

    def __init__(self, workers: int, folder: Path, env: dict) -> None:
        self.workers, self.folder, self.env = workers, folder, env
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.scheduler: subprocess.Popen | None = None
        self.worker_processes: list[subprocess.Popen] = []

    def _start(self, command: list[str], log_name: str) -> subprocess.Popen:
        with open(self.folder / log_name, "ab") as log:
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> Cluster:
        dask = shutil.which("dask")
        if dask is None:
            raise SystemExit(
                "classroom: the `dask` command is missing: pip install '.[cluster]'"
            )
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = self._start(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--no-dashboard",
            ],
            "scheduler.log",
        )
        for i in range(self.workers):
            self.worker_processes.append(
                self._start(
                    [
                        "nice",
                        "-n",
                        str(WORKER_NICENESS),
                        dask,
                        "worker",
                        self.address,
                        "--host",
                        "127.0.0.1",
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"worker-{i}",
                        "--local-directory",
                        str(self.folder / "dask"),
                    ],
                    f"worker-{i}.log",
                )
            )
        from distributed import Client  # only when a cluster is asked for

        with Client(self.address, timeout=CLUSTER_START_SECONDS) as client:
            client.wait_for_workers(self.workers, timeout=CLUSTER_START_SECONDS)
        return self

    def stop(self) -> None:
        for process in self.worker_processes:
            end_group(process)
        end_group(self.scheduler)


# -- CPU accounting -----------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[float, int]]:
    """Each thread of ``pid``: (CPU seconds, nice value), from /proc."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()
            # after the name: state is field 3, utime 14, stime 15, nice 19
            seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            threads[int(task.name)] = (seconds, int(fields[16]))
    return threads


def machine_ticks() -> list[int]:
    """The machine's CPU time counters from /proc/stat (idle 4th, iowait 5th,
    steal 8th)."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


class CpuMeter:
    """CPU seconds of process trees over a window, sampled in a thread.

    ``roots`` names the trees (server, scheduler, worker-i); every other
    process under this one is the load generator. The server's threads are
    split by priority: those niced above the server's own are its training.
    A process or thread that ends between two samples loses what it used since
    the last one (at most ``CPU_SAMPLE_SECONDS``).
    """

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.first: dict[tuple, float] = {}
        self.last: dict[tuple, float] = {}
        self.started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _group(self, proc: psutil.Process) -> str:
        pids = {proc.pid}
        with contextlib.suppress(psutil.Error):
            pids |= {p.pid for p in proc.parents()}
        for name, pid in self.roots.items():
            if pid in pids:
                return name
        # This process runs the websocket students; its children are Playwright's
        # driver and Chromium.
        return "harness" if proc.pid == os.getpid() else "browsers"

    def sample(self) -> dict[tuple, float]:
        now = {}
        me = psutil.Process()
        base_nice = 0
        with contextlib.suppress(psutil.Error, KeyError):
            base_nice = psutil.Process(self.roots["server"]).nice()
        for proc in [me, *me.children(recursive=True)]:
            try:
                group = self._group(proc)
                key = (proc.pid, proc.create_time())
                if group == "server":
                    for tid, (seconds, nice) in thread_cpu(proc.pid).items():
                        part = "server training" if nice > base_nice else "server"
                        now[(part, *key, tid)] = seconds
                else:
                    times = proc.cpu_times()
                    now[(group, *key)] = times.user + times.system
            except psutil.Error:
                continue  # ended meanwhile
        return now

    def _loop(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_SECONDS):
            now = self.sample()
            if self.started:
                for key, seconds in now.items():
                    self.first.setdefault(key, 0.0)  # born inside the window
                    self.last[key] = seconds

    def start(self) -> CpuMeter:
        """Open the window: what every process used so far is not counted."""
        self.first = self.sample()
        self.last = dict(self.first)
        self.ticks = machine_ticks()
        self.t0 = time.monotonic()
        self.started = True
        self._thread.start()
        return self

    def stop(self) -> dict:
        """Close the window: CPU seconds and shares of elapsed x cores by group."""
        self._stop.set()
        self._thread.join()
        for key, seconds in self.sample().items():
            self.first.setdefault(key, 0.0)
            self.last[key] = seconds
        elapsed = time.monotonic() - self.t0
        cores = os.cpu_count() or 1
        seconds: dict[str, float] = {}
        for key, last in self.last.items():
            group = "worker" if key[0].startswith("worker") else key[0]
            used = max(0.0, last - self.first[key])
            seconds[group] = seconds.get(group, 0.0) + used
            if group in ("harness", "browsers"):
                seconds["load generator"] = seconds.get("load generator", 0.0) + used
        ticks = [b - a for a, b in zip(self.ticks, machine_ticks(), strict=False)]
        idle = ticks[3] + ticks[4]
        return {
            "elapsed": round(elapsed, 1),
            "cores": cores,
            "seconds": {k: round(v, 1) for k, v in sorted(seconds.items())},
            "share": {
                k: round(v / (elapsed * cores), 3) for k, v in sorted(seconds.items())
            },
            "machine_busy": round(1 - idle / max(1, sum(ticks)), 3),
            "machine_steal": round(ticks[7] / max(1, sum(ticks)), 3)
            if len(ticks) > 7
            else 0.0,
        }


# -- one student --------------------------------------------------------------------


@dataclass
class Student:
    """What one session saw."""

    number: int
    client: str = "browser"  # or "ws": a websocket client (classroom_ws)
    renders: list[tuple[str, float]] = field(default_factory=list)  # (page, s)
    first_load: float | None = None  # goto Home until it finished, seconds
    predictions: list[float] = field(default_factory=list)  # mouse-up to shown, s
    page_done: list[float] = field(default_factory=list)  # mouse-up to idle, s
    # mouse-up to the page saying its script runs (the server has the stroke), s
    run_started: list[float] = field(default_factory=list)
    server_ms: list[tuple[int, int]] = field(default_factory=list)  # (prep, models)
    strokes: list[int] = field(default_factory=list)
    misreads: list[str] = field(default_factory=list)
    reloads: int = 0  # pages reloaded after a blank page or a step that failed
    media_fetched: int = 0  # images a websocket student fetched (/media/...)
    media_failed: int = 0  # of which the server did not answer 200
    errors: list[str] = field(default_factory=list)
    start_click: float | None = None  # wall clock
    job: dict = field(default_factory=dict)  # window.__job, wall-clock ms
    # A websocket student's last messages, printed under each of its errors.
    recent: Callable[[], str] | None = field(default=None, repr=False)

    def error(self, where: str, text: str) -> None:
        self.errors.append(f"student {self.number}, {where}: {text}")
        print(f"  error: {self.errors[-1]}", flush=True)
        if self.recent is not None:
            print(self.recent(), flush=True)


class Session:
    """One student's browser context and page, and what the student does."""

    def __init__(self, record: Student, page, url: str, shots: Path) -> None:
        self.record, self.page, self.url, self.shots = record, page, url, shots
        self.seen_errors: set[str] = set()  # on the page as it stands
        self.reloads = 0
        page.on("pageerror", lambda err: record.error("JavaScript", str(err)))

    async def blank(self) -> bool:
        """True if Streamlit's app is gone from the page (a white page: its
        frontend failed)."""
        return await self.page.locator("[data-testid=stApp]").count() == 0

    async def recover(self) -> None:
        """Reload the page, as a person facing a white or stuck page would (its
        URL keeps the tab's client id, so the job is found again), then Draw."""
        self.reloads += 1
        await self.page.reload()
        await self.page.locator("[data-testid=stMain] h1").first.wait_for()
        await self.finished()
        self.seen_errors = set()
        if not self.page.url.split("?")[0].endswith("/draw"):
            await self.visit("Draw")

    async def check_errors(self, where: str) -> None:
        """Record each error shown that was not on the page before."""
        texts = set(await self.page.evaluate(ERROR_TEXTS))
        for text in texts - self.seen_errors:
            self.record.error(where, text.splitlines()[0][:200] if text else "?")
        self.seen_errors = texts

    async def screenshot(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self.page.screenshot(
                path=self.shots / f"student-{self.record.number}-{name}.png"
            )

    async def finished(self) -> None:
        await self.page.wait_for_selector(IDLE, timeout=PAGE_MS)

    async def open_home(self) -> None:
        start = time.monotonic()
        await self.page.goto(self.url)
        await self.page.locator("[data-testid=stMain] h1").first.wait_for()
        await self.finished()
        self.record.first_load = time.monotonic() - start
        await self.check_errors("Home")

    async def visit(self, label: str) -> None:
        """Click the sidebar's link to ``label`` and time the page until it has
        finished running: its title shown (Home's names the dataset), then idle."""
        page = self.page
        heading = page.locator("[data-testid=stMain] h1").first
        before = await heading.inner_text()
        link = page.locator(NAV_LINK).filter(has=page.get_by_text(label, exact=True))
        start = time.monotonic()
        await link.click()
        path = re.escape(PAGE_PATHS[label])
        await page.wait_for_url(re.compile(rf"^https?://[^/]+/{path}(\?.*)?$"))
        if label == "Home":
            await page.wait_for_function(
                "([sel, before]) => { const h = document.querySelector(sel);"
                " return h && h.innerText !== before; }",
                arg=["[data-testid=stMain] h1", before],
                polling=POLL_MS,
                timeout=PAGE_MS,
            )
        else:
            await page.locator(
                "[data-testid=stMain] h1", has_text=label
            ).first.wait_for(timeout=PAGE_MS)
        await self.finished()
        self.record.renders.append((label, time.monotonic() - start))
        self.seen_errors = set()
        await self.check_errors(label)

    async def start_quick_training(self) -> None:
        """On Train: the quick preset, then Start once its estimate is shown."""
        page = self.page
        box = page.get_by_role("combobox", name="Start from preset", exact=True)
        await box.click()
        await page.get_by_role("option").filter(has_text="quick").first.click()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('input[role=combobox]')]"
            ".some(e => e.value === 'quick')",
            polling=POLL_MS,
            timeout=PAGE_MS,
        )
        await self.finished()
        start = page.get_by_role("button", name="Start training")
        await page.wait_for_function(
            "() => [...document.querySelectorAll('button')].some(b =>"
            " b.innerText.includes('Start training') && !b.disabled)",
            polling=POLL_MS,
            timeout=PAGE_MS,
        )
        self.record.start_click = time.time()
        await start.click()
        # Taken: the sidebar shows the job, waiting or running.
        await page.wait_for_function(
            "() => window.__job.waiting !== null || window.__job.running !== null"
            " || window.__job.done !== null",
            polling=POLL_MS,
            timeout=PAGE_MS,
        )
        await self.check_errors("Train")

    async def has_ink(self) -> bool:
        return await self.page.locator(INK_LAYER).evaluate(HAS_INK)

    async def stroke(self, shape) -> int:
        """One stroke through ``shape`` (fractions of the canvas), drawn again if
        a fresh canvas did not take it (as appdriver.stroke)."""
        page = self.page
        for attempt in range(1, STROKE_ATTEMPTS + 1):
            box = await page.locator(CANVAS).bounding_box()
            if box is None:
                raise RuntimeError("the drawing canvas is not on the page")
            points = [
                (box["x"] + fx * box["width"], box["y"] + fy * box["height"])
                for fx, fy in shape
            ]
            await page.mouse.move(*points[0])
            await page.mouse.down()
            for (x0, y0), (x1, y1) in itertools.pairwise(points):
                steps = max(2, int(max(abs(x1 - x0), abs(y1 - y0)) / 8))
                await page.mouse.move(x1, y1, steps=steps)
            await page.mouse.up()
            for _ in range(50):  # up to 5 s for the ink to show
                if await self.has_ink():
                    return attempt
                await page.wait_for_timeout(POLL_MS)
        raise RuntimeError(f"{STROKE_ATTEMPTS} strokes left no ink on the canvas")

    async def draw(self, shape, digit: str) -> None:
        """Draw ``digit``, time its prediction, check it, then Clear."""
        page, record = self.page, self.record
        await page.locator(CANVAS).wait_for(timeout=PAGE_MS)
        record.strokes.append(await self.stroke(shape))
        await page.wait_for_function(
            "() => window.__draw.shown !== null && window.__draw.idle !== null",
            polling=POLL_MS,
            timeout=PAGE_MS,
        )
        up, running, shown, idle = await page.evaluate(
            "[window.__draw.up, window.__draw.running, window.__draw.shown,"
            " window.__draw.idle]"
        )
        record.predictions.append((shown - up) / 1000)
        record.page_done.append((idle - up) / 1000)
        if running is not None:
            record.run_started.append((running - up) / 1000)
        with contextlib.suppress(Exception):
            text = await page.get_by_text("Server time:").inner_text(timeout=5_000)
            if match := SERVER_TIME.search(text):
                record.server_ms.append((int(match[1]), int(match[2])))
        first = await page.locator(PREDICTION).first.inner_text()
        if first.strip() != digit:
            record.misreads.append(f"drew {digit}, read {first.strip()!r}")
        await self.check_errors("Draw")
        await page.get_by_role("button", name="Clear", exact=True).click()
        await page.wait_for_function(
            f"() => !document.querySelector({json.dumps(PREDICTION)})",
            polling=POLL_MS,
            timeout=PAGE_MS,
        )
        await self.finished()

    async def job(self) -> dict:
        """The training job as the sidebar has shown it (wall-clock ms)."""
        job = await self.page.evaluate("window.__job")
        for key, value in job.items():  # a reload would have restarted the watch
            if value is not None:
                self.record.job[key] = value
        return self.record.job


async def student(
    record: Student,
    browser,
    url: str,
    arrival: float,
    args: argparse.Namespace,
    class_done: asyncio.Event,
    shots: Path,
) -> None:
    """One student, arriving ``arrival`` seconds in, until the class is done."""
    await asyncio.sleep(arrival)
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_MS)
    await context.add_init_script(PAGE_TIMERS)
    session = Session(record, await context.new_page(), url, shots)
    step = "arriving"
    try:
        step = "opening Home"
        try:
            await session.open_home()
        except Exception as err:  # once more, as a person would
            record.error(step, f"{type(err).__name__}: {str(err)[:200]}")
            session.reloads += 1
            await session.open_home()
        step = "opening Train"
        await session.visit("Train")
        step = "starting training"
        await session.start_quick_training()
        step = "opening Draw"
        try:
            await session.visit("Draw")
        except Exception as err:
            record.error(step, f"{type(err).__name__}: {str(err)[:200]}")
            await session.screenshot("draw")
            step = "reloading"
            await session.recover()
        failures = 0
        rng = np.random.default_rng(record.number)
        for n in itertools.count():
            if class_done.is_set():
                break
            next_draw = time.monotonic() + args.draw_every
            shape, digit = (ONE, "1") if (n + record.number) % 2 == 0 else (SEVEN, "7")
            # Each drawing a little different, as a person's are: the same
            # strokes would make the same image, which the server has cached.
            shape = [
                (x + dx, y + dy)
                for (x, y), (dx, dy) in zip(
                    shape, rng.uniform(-JITTER, JITTER, (len(shape), 2)), strict=True
                )
            ]
            try:
                if await session.blank():
                    record.error(f"before drawing {n + 1}", "the page went blank")
                    step = "reloading"
                    await session.recover()
                step = f"drawing {n + 1}"
                await session.draw(shape, digit)
                if args.tour_every and (n + 1) % args.tour_every == 0:
                    label = TOUR[(n // args.tour_every + record.number) % len(TOUR)]
                    step = f"looking at {label}"
                    await session.visit(label)
                    step = "back to Draw"
                    await session.visit("Draw")
                failures = 0
            except Exception as err:
                record.error(step, f"{type(err).__name__}: {str(err)[:200]}")
                await session.screenshot(f"{n}")
                failures += 1
                if failures >= 3:
                    break
                with contextlib.suppress(Exception):
                    await session.recover()
            job = await session.job()
            if job.get("done") is not None or job.get("gone") is not None:
                record.job["finished"] = True
            await until(next_draw, class_done)
    except Exception as err:
        record.error(step, f"{type(err).__name__}: {str(err)[:200]}")
        await session.screenshot("failed")
    finally:
        with contextlib.suppress(Exception):
            await session.job()
        record.reloads = session.reloads
        record.job["finished"] = True
        with contextlib.suppress(Exception):
            await context.close()


def browser_numbers(args: argparse.Namespace) -> set[int]:
    """Which students are Chromium tabs: all with ``--clients browser``; with
    ``ws``, ``--browser-students`` of them spread evenly over the arrivals."""
    if args.clients == "browser":
        return set(range(args.students))
    n, b = args.students, min(args.browser_students, args.students)
    return {int((k + 0.5) * n / b) for k in range(b)}


async def class_load(url: str, args: argparse.Namespace, shots: Path) -> list[Student]:
    """Every student against ``url``: the Chromium ones over ``args.browsers``
    Chromium processes, the others websocket clients (classroom_ws)."""
    from playwright.async_api import async_playwright

    in_browser = browser_numbers(args)
    records = [
        Student(i, client="browser" if i in in_browser else "ws")
        for i in range(args.students)
    ]
    class_done = asyncio.Event()
    spacing = args.arrive_over / max(1, args.students - 1)

    async def watch() -> None:
        started = time.monotonic()
        deadline = started + args.timeout
        while time.monotonic() < deadline:
            if all(r.job.get("finished") for r in records):
                break
            await asyncio.sleep(1)
            if int(time.monotonic() - started) % 30 == 0:
                done = sum(r.job.get("done") is not None for r in records)
                drawn = sum(len(r.predictions) for r in records)
                print(
                    f"  {time.monotonic() - started:4.0f} s: {done} trained, "
                    f"{drawn} drawings",
                    flush=True,
                )
        class_done.set()

    def one(r: Student, browsers: list):
        if r.client == "ws":
            return ws_student(
                r,
                url,
                r.number * spacing,
                args,
                class_done,
                [(ONE, "1"), (SEVEN, "7")],
                TOUR,
                PAGE_PATHS,
            )
        return student(
            r,
            browsers[r.number % len(browsers)],
            url,
            r.number * spacing,
            args,
            class_done,
            shots,
        )

    async with async_playwright() as p:
        browsers = [
            await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for _ in range(min(args.browsers, len(in_browser)))
        ]
        try:
            await asyncio.gather(watch(), *(one(r, browsers) for r in records))
        finally:
            for browser in browsers:
                with contextlib.suppress(Exception):
                    await browser.close()
    return records


# -- one configuration --------------------------------------------------------------


def stats(values: list[float]) -> dict:
    """n, median, 95th percentile and max of ``values`` (None if empty)."""
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "max": round(max(values), 3),
    }


def summarise(records: list[Student], runs_dir: Path) -> dict:
    """The figures of one configuration from what the students saw and the store."""
    from digits import store

    runs, broken = store.list_runs(runs_dir, include_pretrained=False)
    stored = {run.name: run for run in runs}
    clicks = [r.start_click for r in records if r.start_click is not None]
    waits, on_page, train_seconds, saved_at = [], [], [], []
    lost, unfinished, errors = [], [], []
    for r in records:
        errors += r.errors
        job = r.job
        if r.start_click is None:
            continue
        if job.get("running") is not None:
            waits.append(job["running"] / 1000 - r.start_click)
        if job.get("done") is not None:
            on_page.append((job["done"] - job["running"]) / 1000)
            saved_at.append(job["done"] / 1000)
            if job["name"] in stored:
                train_seconds.append(stored[job["name"]].meta["train_seconds"])
            else:
                lost.append(job["name"])
        elif job.get("gone") is not None:
            errors.append(f"student {r.number}: the job ended without a run")
        else:
            unfinished.append(r.number)
    renders = [s for r in records for _, s in r.renders]
    by_page: dict[str, list[float]] = {}
    for r in records:
        for label, s in r.renders:
            by_page.setdefault(label, []).append(s)
    t0 = min(clicks, default=0.0)
    raw = [
        {
            "student": r.number,
            "start_click": None if r.start_click is None else r.start_click - t0,
            **{
                k: (
                    v / 1000 - t0
                    if isinstance(v, (int, float)) and k != "finished"
                    else v
                )
                for k, v in r.job.items()
            },
            "drawings": len(r.predictions),
            "errors": len(r.errors),
        }
        for r in records
    ]
    by_client = {}
    for kind in ("ws", "browser"):
        mine = [r for r in records if r.client == kind]
        by_client[kind] = {
            "students": len(mine),
            "page_render": stats([s for r in mine for _, s in r.renders]),
            "first_load": stats([r.first_load for r in mine if r.first_load]),
            "prediction": stats([t for r in mine for t in r.predictions]),
            "draw_page_done": stats([t for r in mine for t in r.page_done]),
            "draw_run_started": stats([t for r in mine for t in r.run_started]),
            "errors": sum(len(r.errors) for r in mine),
        }
    return {
        "students": len(records),
        "by_client": by_client,
        "page_render": stats(renders),
        "page_render_by_page": {k: stats(v) for k, v in sorted(by_page.items())},
        "first_load": stats([r.first_load for r in records if r.first_load]),
        "prediction": stats([t for r in records for t in r.predictions]),
        "draw_page_done": stats([t for r in records for t in r.page_done]),
        "draw_run_started": stats([t for r in records for t in r.run_started]),
        "server_preprocess_ms": stats([p for r in records for p, _ in r.server_ms]),
        "server_models_ms": stats([m for r in records for _, m in r.server_ms]),
        "strokes_redrawn": sum(s > 1 for r in records for s in r.strokes),
        "misreads": [m for r in records for m in r.misreads],
        "reloads": sum(r.reloads for r in records),
        "media_fetched": sum(r.media_fetched for r in records),
        "media_failed": sum(r.media_failed for r in records),
        "queue_wait": stats(waits),
        "job_on_page": stats(on_page),
        "train_seconds": stats(train_seconds),
        "trained": len(saved_at),
        "all_trained_after": round(max(saved_at) - min(clicks), 1)
        if clicks and len(saved_at) == len(clicks)
        else None,
        "runs_in_store": len(runs),
        "broken_runs": [f"{b.path.name}: {b.reason}" for b in broken],
        "lost_runs": lost,
        "unfinished_jobs": unfinished,
        "errors": errors,
        "per_student": raw,  # seconds from the first Start
    }


def run_configuration(workers: int, args: argparse.Namespace) -> dict:
    """A fresh server (and cluster of ``workers``), the class, the figures."""
    folder = Path(tempfile.mkdtemp(prefix=f"classroom-w{workers}-"))
    (folder / "runs").mkdir()
    (folder / "shots").mkdir()
    env = dict(os.environ)
    env.pop(SCHEDULER_ENV, None)
    data = env.get("DIGITS_DATA_DIR")
    if data:  # the workers may start elsewhere
        env["DIGITS_DATA_DIR"] = str(Path(data).resolve())
    env["DIGITS_RUNS_DIR"] = str(folder / "runs")
    cluster = server = meter = None
    kept = args.keep
    try:
        roots = {}
        if workers:
            print(f"[{workers} worker(s)] starting a Dask cluster...", flush=True)
            cluster = Cluster(workers, folder, env).start()
            roots["scheduler"] = cluster.scheduler.pid
            for i, process in enumerate(cluster.worker_processes):
                roots[f"worker-{i}"] = process.pid
        extra = {SCHEDULER_ENV: cluster.address} if cluster else {}
        if data:
            extra["DIGITS_DATA_DIR"] = env["DIGITS_DATA_DIR"]
        server = Server(folder / "runs", folder / "streamlit.log", env=extra).start()
        roots["server"] = server.process.pid
        print(
            f"[{workers} worker(s)] server at {server.url}; {args.students} "
            f"students arriving over {args.arrive_over:.0f} s",
            flush=True,
        )
        meter = CpuMeter(roots).start()
        started = time.monotonic()
        # Playwright's driver and Chromium inherit this thread's nice value; the
        # server and the cluster, started before, keep their own.
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, niceness + args.generator_nice)
        try:
            records = asyncio.run(class_load(server.url, args, folder / "shots"))
        finally:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        elapsed = time.monotonic() - started
        cpu = meter.stop()
        meter = None
        result = {
            "workers": workers,
            "scheduler": cluster.address if cluster else None,
            "elapsed": round(elapsed, 1),
            **summarise(records, folder / "runs"),
            "cpu": cpu,
            "load_average": os.getloadavg(),
            "folder": str(folder),
        }
        if result["errors"] or result["lost_runs"] or result["unfinished_jobs"]:
            kept = True  # the server's log and the screenshots say why
        return result
    except BaseException:
        kept = True
        raise
    finally:
        if meter is not None:
            meter._stop.set()
        if server is not None:
            server.kill()
        if cluster is not None:
            cluster.stop()
        if kept:
            print(f"[{workers} worker(s)] logs, runs and screenshots kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


# -- the report ---------------------------------------------------------------------


def seconds(figure: dict) -> str:
    if figure["n"] == 0:
        return "-"
    return f"{figure['median']:.2f} / {figure['p95']:.2f}"


def milliseconds(prep: dict, models: dict) -> str:
    if prep["n"] == 0:
        return "-"
    return (
        f"{prep['median']:.0f} + {models['median']:.0f} / "
        f"{prep['p95']:.0f} + {models['p95']:.0f}"
    )


def table(results: list[dict]) -> str:
    """The figures of every configuration side by side, in Markdown."""

    def cpu(r: dict, group: str) -> str:
        share = r["cpu"]["share"].get(group)
        return (
            "-"
            if share is None
            else f"{share:.0%} ({r['cpu']['seconds'][group]:.0f} s)"
        )

    def listed(values: list) -> str:
        return str(len(values))

    def population(kind: str, label: str) -> list:
        """The latency rows of one kind of student, if any ran."""
        if not any(r["by_client"][kind]["students"] for r in results):
            return []
        what = f"{label}: " if len(kinds) > 1 else ""
        return [
            *(
                [(f"{what}students", lambda r: str(r["by_client"][kind]["students"]))]
                if what
                else []
            ),
            *(
                (f"{what}{name}", lambda r, f=figure: seconds(r["by_client"][kind][f]))
                for name, figure in (
                    ("page render, s (median / p95)", "page_render"),
                    ("first load of Home, s", "first_load"),
                    ("drawing to prediction, s", "prediction"),
                    ("drawing to its rerun started, s", "draw_run_started"),
                    ("drawing to Draw page finished, s", "draw_page_done"),
                )
            ),
            (
                f"{what}drawings",
                lambda r: str(r["by_client"][kind]["prediction"]["n"]),
            ),
        ]

    kinds = [
        k
        for k in ("ws", "browser")
        if any(r["by_client"][k]["students"] for r in results)
    ]
    rows = [
        ("students", lambda r: str(r["students"])),
        *population("ws", "websocket clients"),
        *population("browser", "Chromium"),
        (
            "Draw's server time: preprocessing + models, ms",
            lambda r: milliseconds(r["server_preprocess_ms"], r["server_models_ms"]),
        ),
        ("queue wait per job, s", lambda r: seconds(r["queue_wait"])),
        ("job running to saved, on the page, s", lambda r: seconds(r["job_on_page"])),
        ("training time per job (run store), s", lambda r: seconds(r["train_seconds"])),
        (
            "all trained after (from first Start), s",
            lambda r: (
                "-"
                if r["all_trained_after"] is None
                else f"{r['all_trained_after']:.0f}"
            ),
        ),
        (
            "runs trained / in the store",
            lambda r: f"{r['trained']} / {r['runs_in_store']}",
        ),
        ("errors", lambda r: listed(r["errors"])),
        ("lost runs", lambda r: listed(r["lost_runs"])),
        ("unfinished jobs", lambda r: listed(r["unfinished_jobs"])),
        ("misread drawings", lambda r: listed(r["misreads"])),
        ("pages reloaded (blank or stuck)", lambda r: str(r["reloads"])),
        (
            "images fetched by websocket students / failed",
            lambda r: f"{r.get('media_fetched', 0)} / {r.get('media_failed', 0)}",
        ),
        ("CPU: load generator", lambda r: cpu(r, "load generator")),
        ("  of which the harness (websocket students)", lambda r: cpu(r, "harness")),
        ("  of which Playwright and Chromium", lambda r: cpu(r, "browsers")),
        ("CPU: server (pages, predictions)", lambda r: cpu(r, "server")),
        ("CPU: server's training threads", lambda r: cpu(r, "server training")),
        ("CPU: Dask workers", lambda r: cpu(r, "worker")),
        ("CPU: scheduler", lambda r: cpu(r, "scheduler")),
        (
            "machine busy (everyone) / steal",
            lambda r: (
                f"{r['cpu']['machine_busy']:.0%} / {r['cpu']['machine_steal']:.0%}"
            ),
        ),
        ("elapsed, s", lambda r: f"{r['elapsed']:.0f}"),
    ]
    head = "| | " + " | ".join(f"{r['workers']} worker(s)" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="Dask workers, one configuration each (0: no cluster, "
        "the server trains itself); default 0 1 2",
    )
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument(
        "--clients",
        choices=["ws", "browser"],
        default="ws",
        help="ws: websocket clients speaking Streamlit's protocol (classroom_ws), "
        "with --browser-students Chromium tabs among them; browser: every student "
        "a Chromium tab",
    )
    parser.add_argument(
        "--browser-students",
        type=int,
        default=2,
        help="with --clients ws: how many students are Chromium tabs (default 2)",
    )
    parser.add_argument(
        "--browsers",
        type=int,
        default=3,
        help="Chromium processes the students' contexts share",
    )
    parser.add_argument(
        "--arrive-over",
        type=float,
        default=45.0,
        help="seconds over which the students arrive, evenly",
    )
    parser.add_argument(
        "--draw-every",
        type=float,
        default=10.0,
        help="seconds between a student's drawings",
    )
    parser.add_argument(
        "--tour-every",
        type=int,
        default=6,
        help="look at another page after every N drawings (0: never)",
    )
    parser.add_argument(
        "--generator-nice",
        type=int,
        default=0,
        help="run the load generator (Playwright's driver and Chromium) this much "
        "nicer than the server, so that on one machine it takes the CPU after it",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="end the class after this many seconds in any case",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the figures (default: "
        "classroom-<time>.json in the temporary folder)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep each configuration's folder (runs, logs)",
    )
    args = parser.parse_args(argv)
    if (
        args.students < 1
        or args.browsers < 1
        or args.browser_students < 0
        or min(args.workers) < 0
    ):
        parser.error("--students and --browsers must be 1 or more, --workers 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(
            f"classroom: Chromium is missing at {CHROMIUM}: apt-get install chromium"
        )
    # SIGTERM ends the run as Ctrl-C does: every process started is ended.
    os.environ.pop(SCHEDULER_ENV, None)  # only the runs with workers set it
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.json or Path(tempfile.gettempdir()) / f"classroom-{stamp}.json"
    results = []
    started = time.monotonic()
    for workers in args.workers:
        results.append(run_configuration(workers, args))
        path.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "commit": git_commit(),
                    "results": results,
                },
                indent=1,
            )
        )
    print()
    print(table(results))
    print(
        f"\n{len(args.workers)} configuration(s) in "
        f"{(time.monotonic() - started) / 60:.1f} min; figures in {path}"
    )
    for r in results:
        for kind in ("errors", "lost_runs", "unfinished_jobs", "misreads"):
            for item in r[kind][:10]:
                print(f"  [{r['workers']} worker(s)] {kind}: {item}")
    return 0 if all(not r["errors"] and not r["lost_runs"] for r in results) else 1


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return "?"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("classroom: interrupted; every process it started was ended")
        sys.exit(130)
