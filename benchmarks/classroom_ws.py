"""The classroom load test's lightweight students (``classroom.py --clients ws``).

A Chromium tab costs this 2-core machine about 0.7 CPU-seconds per drawing, so
30 of them starve the server they measure. Here each student is one asyncio
websocket that speaks Streamlit's own wire protocol to the server, as the
browser's frontend does: binary protobuf ``BackMsg``s to ``/_stcore/stream``
(``rerun_script`` with the page, the query string and the widget states) and
``ForwardMsg``s back (``new_session``, ``delta``, ``script_finished``...). The
messages are the installed streamlit package's ``streamlit.proto`` modules: it
is the wire protocol, not an API, and only this benchmark uses it (the pages
never do); a Streamlit upgrade that changes it breaks this file only.

What a student does is what a browser tab does, message for message:

- open Home (a rerun of the main script, no page, no query string; the server
  gives the tab its ``?client=...`` id in a ``page_info_changed``, kept as the
  query string of every later rerun, so a reconnected student finds its job);
- go to Train (a rerun with Train's ``page_script_hash``, from the
  ``navigation`` message's pages, and the sidebar link's query string), choose
  the ``quick`` preset (the selectbox keyed ``train-preset-cnn``: its widget
  state) and press "Start training" (the button's trigger value);
- go to Draw and, every ``--draw-every`` seconds, send a drawing: the
  ``streamlit-drawable-canvas`` component's state as its frontend sets it,
  ``{"drawing": {"raw": fabric.js JSON, "data": "data:image/png;base64,..."}}``
  as the canvas widget's ``json_value``, the PNG a 1 or a 7 stroke drawn with
  Pillow (white on black, 252 px, brush 18, as the Draw page's canvas), then
  press Clear;
- now and then look at another page and come back (``--tour-every``);
- after each of its reruns, fetch the page's images (``/media/...`` URLs of the
  image elements) over HTTP, as a browser loads them; not timed, and counted
  (with the ones that failed) apart;
- rerun the sidebar's fragment when the server asks (``auto_rerun``: every
  second while a job is unfinished), as the frontend's timer does, but only
  while none of the student's own reruns is running (the frontend may send one
  meanwhile; the server would then run it after).

Measured in the harness's clock: page render and drawing to prediction, from
sending the rerun to the ``script_finished`` of the page (the first run that
finishes successfully: a ``st.rerun`` in between is part of it) and to the
delta that shows the ``Prediction`` metric; the drawing's run started (the
``new_session`` of the run); the Draw page's own "Server time". The training
job from the sidebar's deltas, as the browser students read it: waiting
(a progress bar without a percentage), running (with one), saved ("Last run:
NAME"), or gone (30 s without either). Errors: exception elements, error
alerts, runs that did not finish in ``PAGE_SECONDS``, and disconnects (the
student then connects again with its query string, as a reloaded tab would).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import io
import json
import os
import re
import time

import numpy as np
from PIL import Image, ImageDraw
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

PAGE_SECONDS = 90.0  # as appdriver.PAGE_MS: a page's run, loaded or not
CANVAS_PIXELS = 252  # pages/draw.py's canvas
BRUSH = 18  # pages/draw.py's default brush
GONE_SECONDS = 30.0  # a job with neither progress nor a run for this long ended
MAIN, SIDEBAR = 0, 1  # the first index of a delta's path
SERVER_TIME = re.compile(r"preprocessing (\d+) ms, \d+ models (\d+) ms")
LAST_RUN = re.compile(r"Last run: ([\w.-]+)")
# CLASSROOM_WS_TRACE=1: print every message a student sends and receives.
TRACE = os.environ.get("CLASSROOM_WS_TRACE") == "1"
DONE = ("FINISHED_SUCCESSFULLY", "FINISHED_WITH_COMPILE_ERROR")
SCRIPT_FINISHED = ForwardMsg.ScriptFinishedStatus


def drawing_value(shape, rng: np.random.Generator) -> tuple[str, str]:
    """A stroke through ``shape`` (fractions of the canvas, jittered a little)
    as the canvas component sends it: its widget state's JSON, and the PNG."""
    points = [
        (float(x * CANVAS_PIXELS), float(y * CANVAS_PIXELS))
        for x, y in np.asarray(shape) + rng.uniform(-0.04, 0.04, (len(shape), 2))
    ]
    image = Image.new("RGBA", (CANVAS_PIXELS, CANVAS_PIXELS), (0, 0, 0, 255))
    pen = ImageDraw.Draw(image)
    pen.line(points, fill=(255, 255, 255, 255), width=BRUSH, joint="curve")
    r = BRUSH / 2  # fabric.js draws round caps
    for x, y in points:
        pen.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 255, 255))
    png = io.BytesIO()
    image.save(png, format="PNG")
    path = [["M", *points[0]], *(["L", *p] for p in points[1:])]
    raw = {
        "version": "7.4.0",
        "objects": [
            {
                "type": "Path",
                "version": "7.4.0",
                "originX": "left",
                "originY": "top",
                "fill": None,
                "stroke": "#FFFFFF",
                "strokeWidth": BRUSH,
                "strokeLineCap": "round",
                "strokeLineJoin": "round",
                "path": path,
            }
        ],
        "background": "#000000",
    }
    data = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    return json.dumps({"drawing": {"raw": raw, "data": data}}), data


class Run:
    """One rerun the student asked for, as its messages arrive."""

    def __init__(self) -> None:
        self.sent = time.monotonic()
        self.started: float | None = None  # its new_session
        self.prediction: tuple[float, str] | None = None  # (time, digit shown)
        self.server_ms: tuple[int, int] | None = None
        self.media: list[str] = []  # the images' URLs (/media/...) on the page
        self.done: float | None = None  # its script_finished
        self.finished = asyncio.get_running_loop().create_future()


class WsStudent:
    """One student's websocket session: what it sends, and what it reads of the
    server's messages (widgets on the page, the sidebar's job, errors)."""

    def __init__(self, record, url: str) -> None:
        self.record, self.url = record, url
        self.stream = url.replace("http://", "ws://") + "/_stcore/stream"
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.query = ""  # the tab's query string (client=...)
        self.page = ""  # page_script_hash of the page shown ("" at first: Home)
        self.path = ""  # its URL path, for the context info
        self.pages: dict[str, str] = {}  # URL path ("" for Home) -> script hash
        self.links: dict[str, str] = {}  # sidebar label -> query string
        self.widgets: dict[str, str] = {}  # label or key -> widget id, this page
        self.disabled: dict[str, bool] = {}  # widget id -> disabled
        self.run_ids: set[str] = set()  # widget ids of the page's last full run
        self.states: dict[str, WidgetState] = {}  # values set, by widget id
        self.fragments: dict[str, float] = {}  # fragment id -> seconds
        self.pending: Run | None = None
        self.seen_errors: set[str] = set()
        self.progress_at: float | None = None  # the sidebar's job, last seen
        self.closed = asyncio.Event()
        # The last messages each way, in short, printed with an error: the
        # errors are rare and a full trace of a class is too long to read.
        self.recent: collections.deque[str] = collections.deque(maxlen=60)
        record.recent = self.dump

    # -- the connection ------------------------------------------------------------

    async def connect(self) -> None:
        self.closed.clear()
        self.ws = await connect(
            self.stream,
            subprotocols=["streamlit"],
            origin=self.url,
            max_size=None,  # pages send images and charts bigger than 1 MiB
            ping_interval=None,  # a browser does not ping
            open_timeout=PAGE_SECONDS,
        )
        self.reader = asyncio.create_task(self._read())
        self.fragment_timer = asyncio.create_task(self._fragments())

    async def close(self) -> None:
        for task in (self.reader, getattr(self, "fragment_timer", None)):
            if task is not None:
                task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def reconnect(self) -> None:
        """Connect again and rerun the page with the tab's query string, as a
        reloaded tab does: its client id finds its job again."""
        self.record.reloads += 1
        await self.close()
        await self.connect()
        self.states = {}
        await self.rerun()

    # -- sending -------------------------------------------------------------------

    async def _send(
        self, triggers: dict[str, WidgetState] | None = None, fragment: str = ""
    ) -> None:
        msg = BackMsg()
        rerun = msg.rerun_script
        rerun.query_string = self.query
        rerun.page_script_hash = self.page
        if fragment:
            rerun.fragment_id = fragment
            rerun.is_auto_rerun = True
        states = {k: v for k, v in self.states.items() if k in self.run_ids}
        states.update(triggers or {})
        for state in states.values():
            rerun.widget_states.widgets.add().CopyFrom(state)
        info = rerun.context_info
        info.timezone, info.timezone_offset, info.locale = "UTC", 0, "en-US"
        info.url = f"{self.url}/{self.path}"
        info.color_scheme = "light"
        if TRACE:
            self._trace("->", "rerun_script", msg)
        self._remember(
            "->",
            f"rerun page={self.page[:6]} fragment={fragment[:6]} "
            f"triggers={sorted(triggers or {})} states={len(states)}",
        )
        await self.ws.send(msg.SerializeToString())

    def _remember(self, way: str, text: str) -> None:
        self.recent.append(f"{time.monotonic():.3f} {way} {text}")

    def dump(self) -> str:
        """The last messages each way, one per line."""
        return "\n".join(f"    [{self.record.number}] {line}" for line in self.recent)

    def _trace(self, way: str, kind: str, msg) -> None:
        text = str(msg).replace("\n", " ")
        text = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,...", text)
        now = time.monotonic()
        print(f"  [{self.record.number} {now:.2f}] {way} {kind} {text[:300]}")

    async def rerun(self, triggers: dict[str, WidgetState] | None = None) -> Run:
        """Rerun the page (with ``triggers`` pressed), wait for it to finish,
        then fetch its images as a browser does (not timed: a page counts as
        shown when its script finished, as the Chromium students')."""
        run = self.pending = Run()
        try:
            await self._send(triggers)
            await asyncio.wait_for(asyncio.shield(run.finished), PAGE_SECONDS)
        finally:
            self.pending = None
        statuses = await asyncio.gather(
            *(self._get(url) for url in dict.fromkeys(run.media)),
            return_exceptions=True,
        )
        self.record.media_fetched += len(statuses)
        self.record.media_failed += sum(status != 200 for status in statuses)
        return run

    async def _get(self, path: str) -> int:
        """GET ``path`` from the server; its HTTP status."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            status = int((await reader.readline()).split()[1])
            await asyncio.wait_for(reader.read(), PAGE_SECONDS)  # to the end
            return status
        finally:
            writer.close()

    async def visit(self, path: str, label: str) -> float:
        """Follow the sidebar's link to the page at ``path`` (labelled ``label``);
        its render time, from the rerun sent to the page finished, seconds."""
        self.page, self.path = self.pages[path], path
        self.query = self.links.get(label, self.query)
        self.states, self.seen_errors = {}, set()
        run = await self.rerun()
        return run.done - run.sent

    def set_value(self, widget: str, **value) -> None:
        state = WidgetState(id=widget, **value)
        self.states[widget] = state

    def trigger(self, widget: str) -> dict[str, WidgetState]:
        return {widget: WidgetState(id=widget, trigger_value=True)}

    async def _fragments(self) -> None:
        """The sidebar's fragment, rerun when the server asked for it."""
        due: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for fragment, every in list(self.fragments.items()):
                if now < due.setdefault(fragment, now + every):
                    continue
                due[fragment] = now + every
                if self.pending is None and self.ws is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await self._send(fragment=fragment)
            for fragment in set(due) - set(self.fragments):
                del due[fragment]

    # -- reading -------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for payload in self.ws:
                if isinstance(payload, bytes):
                    msg = ForwardMsg()
                    msg.ParseFromString(payload)
                    self._take(msg)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            run = self.pending
            if run is not None and not run.finished.done():
                run.finished.set_exception(ConnectionError("the websocket closed"))

    def _take(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if TRACE:
            self._trace("<-", kind, msg)
        self._remember("<-", self._summary(kind, msg))
        run = self.pending
        if kind == "new_session" and msg.metadata.run.fragment_ids:
            pass  # a fragment's run (the sidebar's): the page stays as it is
        elif kind == "new_session":
            self.fragments = {}  # a full run: the frontend drops its timers too
            self.run_ids = set()
            self.widgets = {}
            if run is not None and run.started is None:
                run.started = time.monotonic()
        elif kind == "navigation":
            for page in msg.navigation.app_pages:
                path = "" if page.is_default else page.url_pathname
                self.pages[path] = page.page_script_hash
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "auto_rerun":
            self.fragments[msg.auto_rerun.fragment_id] = msg.auto_rerun.interval
        elif kind == "stop_auto_rerun":
            self.fragments.clear()
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            self._element(msg.metadata.delta_path, msg.delta.new_element, run)
        elif kind == "script_finished":
            status = SCRIPT_FINISHED.Name(msg.script_finished)
            if run is not None and status in DONE and not run.finished.done():
                run.done = time.monotonic()
                if run.started is None:
                    run.started = run.done
                run.finished.set_result(status)

    @staticmethod
    def _summary(kind: str, msg: ForwardMsg) -> str:
        if kind == "new_session":
            run = msg.metadata.run if msg.metadata.HasField("run") else None
            return (
                f"new_session page={msg.new_session.page_script_hash[:6]} "
                f"fragments={list(run.fragment_ids) if run else '?'}"
            )
        if kind == "script_finished":
            return "script_finished " + SCRIPT_FINISHED.Name(msg.script_finished)
        if kind == "delta":
            delta = msg.delta.WhichOneof("type")
            what = (
                msg.delta.new_element.WhichOneof("type")
                if delta == "new_element"
                else delta
            )
            return f"delta {list(msg.metadata.delta_path)} {what}"
        return kind

    def _element(self, path, element, run: Run | None) -> None:
        kind = element.WhichOneof("type")
        where = path[0] if path else MAIN
        if kind in ("button", "selectbox", "bidi_component"):
            widget = getattr(element, kind)
            self.run_ids.add(widget.id)
            name = widget.label if kind == "button" else widget.id.split("-", 2)[-1]
            name = re.sub(r"^[0-9a-f]{32}-", "", name)
            self.widgets[name] = widget.id
            if kind == "button":
                self.disabled[widget.id] = widget.disabled
        elif kind == "imgs" and run is not None:
            run.media += [image.url for image in element.imgs.imgs if image.url]
        elif kind == "page_link" and where == SIDEBAR:
            self.links[element.page_link.label] = element.page_link.query_string
        elif kind == "metric" and where == MAIN:
            if element.metric.label == "Prediction" and run is not None:
                if run.prediction is None:
                    run.prediction = (time.monotonic(), element.metric.body)
        elif kind == "markdown":
            body = element.markdown.body
            if where == SIDEBAR and (match := LAST_RUN.search(body)):
                self._job("done", match[1])
            elif run is not None and (match := SERVER_TIME.search(body)):
                run.server_ms = (int(match[1]), int(match[2]))
        elif kind == "progress" and where == SIDEBAR:
            self.progress_at = time.monotonic()
            running = re.search(r"\d+%", element.progress.text)
            self._job("running" if running else "waiting")
        elif kind == "exception":
            self._error(f"{element.exception.type}: {element.exception.message}")
        elif kind == "alert" and element.alert.format == 1:  # Alert.Format.ERROR
            self._error(element.alert.body)

    def _job(self, state: str, name: str | None = None) -> None:
        job = self.record.job
        if self.record.start_click is None or job.get(state) is not None:
            return
        now = time.time() * 1000  # wall-clock ms, as the browser students'
        job[state] = now
        if state == "done":
            job["name"] = name
            job.setdefault("running", now)

    def _error(self, text: str) -> None:
        line = (text.strip().splitlines() or ["?"])[0][:200]
        if line not in self.seen_errors:
            self.seen_errors.add(line)
            self.record.error(self.path or "Home", line)

    def job_gone(self) -> bool:
        """True if the job was seen and has shown neither progress nor its run
        for ``GONE_SECONDS``."""
        job = self.record.job
        if job.get("done") is not None or self.progress_at is None:
            return False
        if time.monotonic() - self.progress_at > GONE_SECONDS:
            job.setdefault("gone", time.time() * 1000)
            return True
        return False


async def until(moment: float, class_done: asyncio.Event) -> None:
    """Wait until ``moment`` (time.monotonic) or the end of the class."""
    wait = moment - time.monotonic()
    if wait > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(class_done.wait(), wait)


# -- what the student does -------------------------------------------------------------


async def open_home(s: WsStudent) -> None:
    start = time.monotonic()
    await s.connect()
    run = await s.rerun()
    s.record.first_load = run.done - start


async def start_quick_training(s: WsStudent) -> None:
    """On Train: the quick preset, then Start (enabled once the preset's
    estimate is shown)."""
    preset = s.widgets.get("train-preset-cnn")
    if preset is None:
        raise RuntimeError("no preset selectbox (train-preset-cnn) on Train")
    s.set_value(preset, string_value="quick")
    await s.rerun()
    for _ in range(10):
        start = s.widgets.get("Start training")
        if start is not None and not s.disabled.get(start):
            break
        await asyncio.sleep(1)
        await s.rerun()
    else:
        raise RuntimeError("Start training is missing or disabled on Train")
    s.record.start_click = time.time()
    await s.rerun(s.trigger(start))
    deadline = time.monotonic() + PAGE_SECONDS
    job = s.record.job
    while not any(job.get(k) is not None for k in ("waiting", "running", "done")):
        if time.monotonic() > deadline:
            raise RuntimeError("the sidebar did not show the job")
        await asyncio.sleep(0.2)


async def draw(s: WsStudent, shape, digit: str, rng: np.random.Generator) -> None:
    """Send a drawing of ``digit``, time its prediction, check it, then Clear."""
    record = s.record
    canvas = next((w for k, w in s.widgets.items() if "draw-canvas" in k), None)
    if canvas is None:
        raise RuntimeError("no drawing canvas on Draw")
    value, _ = drawing_value(shape, rng)
    s.set_value(canvas, json_value=value)
    run = await s.rerun()
    record.strokes.append(1)
    record.page_done.append(run.done - run.sent)
    if run.started is not None:
        record.run_started.append(run.started - run.sent)
    if run.server_ms is not None:
        record.server_ms.append(run.server_ms)
    if run.prediction is None:
        record.error("Draw", "no prediction shown for the drawing")
    else:
        record.predictions.append(run.prediction[0] - run.sent)
        if run.prediction[1].strip() != digit:
            record.misreads.append(f"drew {digit}, read {run.prediction[1]!r}")
    clear = s.widgets.get("Clear")
    if clear is None:
        raise RuntimeError("no Clear button on Draw")
    s.states.pop(canvas, None)
    await s.rerun(s.trigger(clear))


async def ws_student(
    record,
    url: str,
    arrival: float,
    args,
    class_done: asyncio.Event,
    digits: list[tuple[list, str]],
    tour: tuple[str, ...],
    paths: dict[str, str],
) -> None:
    """One websocket student, arriving ``arrival`` seconds in, until the class
    is done: Home, Train (quick, Start), then Draw, drawing ``digits`` in turn
    (shape, digit) every ``args.draw_every`` seconds, looking at a page of
    ``tour`` every ``args.tour_every`` drawings. ``paths``: label -> URL path."""
    await asyncio.sleep(arrival)
    s = WsStudent(record, url)
    step = "opening Home"
    rng = np.random.default_rng(record.number)

    async def visit(label: str) -> None:
        record.renders.append((label, await s.visit(paths[label], label)))

    try:
        try:
            await open_home(s)
        except Exception as err:  # once more, as a person would
            record.error(step, f"{type(err).__name__}: {str(err)[:200]}")
            await s.close()
            record.reloads += 1
            await open_home(s)
        step = "opening Train"
        await visit("Train")
        step = "starting training"
        await start_quick_training(s)
        step = "opening Draw"
        await visit("Draw")
        failures = 0
        for n in range(10**9):
            if class_done.is_set():
                break
            next_draw = time.monotonic() + args.draw_every
            shape, digit = digits[(n + record.number) % len(digits)]
            try:
                if s.closed.is_set():
                    record.error(f"before drawing {n + 1}", "the websocket closed")
                    step = "reconnecting"
                    await s.reconnect()
                step = f"drawing {n + 1}"
                await draw(s, shape, digit, rng)
                if args.tour_every and (n + 1) % args.tour_every == 0:
                    label = tour[(n // args.tour_every + record.number) % len(tour)]
                    step = f"looking at {label}"
                    await visit(label)
                    step = "back to Draw"
                    await visit("Draw")
                failures = 0
            except Exception as err:
                record.error(step, f"{type(err).__name__}: {str(err)[:200]}")
                failures += 1
                if failures >= 3:
                    break
                with contextlib.suppress(Exception):
                    await s.reconnect()
                    if s.path != paths["Draw"]:
                        await visit("Draw")
            if record.job.get("done") is not None or s.job_gone():
                record.job["finished"] = True
            await until(next_draw, class_done)
    except Exception as err:
        record.error(step, f"{type(err).__name__}: {str(err)[:200]}")
    finally:
        record.job["finished"] = True
        await s.close()
