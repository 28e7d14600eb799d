"""Streamlit helpers shared by the dashboard's pages (``app.py``, ``pages/``).

What lives here is what every page needs around its one call into ``digits``:
``page_header`` (which every page calls first: it refuses browsers on other
machines and draws the sidebar's links), the active dataset (chosen on Home,
downloaded with a progress bar, falling back to scikit-learn's digits when
offline), cached datasets, models and test-set predictions, the list of saved
runs, the widgets several pages share (a run picker, hyperparameter inputs, the
training-set size, a row of metrics, one-shot notices), error display and image
galleries. The figures are ``digits.figures``. ``digits`` itself never imports
streamlit; this module is the only bridge.

Caching: datasets and models are ``st.cache_resource`` (one shared, read-only
object per process); a model's cache key is its run folder plus the modification
time of its metadata, so a re-saved run is reloaded. Test-set predictions and
reports are ``st.cache_data`` on the same key plus the dataset's checksum.
Everything per user (the chosen dataset, the uploaded CSV) is in
``st.session_state``, except the jobs: each browser tab has a random client id in
its URL (``?client=...``), and its training and sweep jobs are kept in one
process-wide ``digits.jobs.JobRegistry`` under it, so that a reload finds them
again (``attach_tab``). The pages' settings are in the URL too (their widgets
are bound to query parameters, and the dataset is ``?dataset=...``), so that a
reload or a shared link opens the same configuration; a shared link carries
settings only, never another tab's jobs.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import streamlit as st

from digits import (
    cluster,
    dashboard,
    data,
    explain,
    figures,
    handwriting,
    humanize,
    jobs,
    preprocess,
    registry,
    slots,
    store,
    sure,
)
from digits.errors import (
    DataError,
    DigitsError,
    DownloadError,
    HandwritingCorrupt,
    HandwritingError,
)

# -- session-state keys -------------------------------------------------------------
DATASET_KEY = "dataset"  # the Home page's dataset choice (a widget that persists)
CSV_KEY = "csv-path"  # the uploaded CSV's dataset name (see upload_name)
CSV_DATA_KEY = "csv-dataset"  # the uploaded CSV, loaded: held by this session only
CSV_UPLOAD_KEY = "csv-upload"  # (file id, error message or None) of the last read
FALLBACK_KEY = "dataset-fallbacks"  # {dataset: download error} for failed ones
JOB_KEY = "training-job"  # the Train page's digits.training_job.TrainingJob
SWEEP_JOB_KEY = "sweep-job"  # the Experiments page's digits.experiments.SweepJob
TAB_JOBS = (JOB_KEY, SWEEP_JOB_KEY)  # the jobs a tab keeps (see tab_job)
TOKEN_KEY = "session-token"  # this session's own random token (see attach_tab)
CLIENT_KEY = "client-id"  # the client id of this session's browser tab
DRAWING_KEY = "drawing"  # the Draw page's last digit, preprocessed (h, w) float
# Inspect's input and model choices, which Draw's "Inspect this digit" sets.
INSPECT_SOURCE_KEY = "inspect-source"  # "Test image" or INSPECT_DRAWING
INSPECT_DRAWING = "Drawing"
INSPECT_MODEL_KEY = "inspect-model"  # a run's name
PRESENTER_FOLDED_KEY = "presenter-folded"  # presenter mode was on at the last run

CSV_CHOICE = "csv"
DATASET_LABELS = {
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "sklearn-digits": "sklearn digits (8x8)",
    CSV_CHOICE: "CSV upload",
}
DEFAULT_DATASET = "mnist"
FALLBACK_DATASET = "sklearn-digits"  # bundled with scikit-learn: always offline
# What the images are, for Home's heading: it follows the dataset in use.
DATASET_TITLES = {
    "mnist": "Handwritten digits",
    "fashion-mnist": "Clothing images",
    "sklearn-digits": "Handwritten digits, 8x8 pixels",
}
CSV_TITLE = "Your own images"
# Uploads are read from memory (a CSV passes through a private temporary folder
# while it is parsed). Each file is limited; Streamlit's server.maxUploadSize is
# the same limit for the CSV, and holds each session's files in memory only.
CSV_LIMIT_MB = dashboard.MAX_UPLOAD_MB
PHOTO_LIMIT_MB = preprocess.MAX_BYTES // 2**20
# An uploaded CSV's dataset is named as if it were saved in this folder under its
# content's hash (as it once was), so runs trained on it match it again. Nothing
# is written there.
UPLOAD_NAME_DIR = Path(tempfile.gettempdir()) / "digits-uploads"


# -- pages -------------------------------------------------------------------------

# The sidebar, top to bottom: (script, label, icon). Streamlit finds the pages by
# itself (pages-directory mode): ``app.py`` is Home, at ``/``, and each
# ``pages/<name>.py`` is served at ``/<name>``. Its own list of them (file names,
# sorted) is hidden by ``client.showSidebarNavigation = false`` in
# ``.streamlit/config.toml``; ``sidebar`` draws these links instead.
PAGES = (
    ("app.py", "Home", ":material/home:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/evaluate.py", "Evaluate", ":material/analytics:"),
    ("pages/draw.py", "Draw", ":material/draw:"),
    ("pages/inspect.py", "Inspect", ":material/biotech:"),
    ("pages/experiments.py", "Experiments", ":material/science:"),
)
APP_TITLE = "digits"


@st.cache_resource(show_spinner=False)
def _log_once(message: str) -> None:
    """Print ``message`` to the server's log the first time only."""
    print(message, file=sys.stderr, flush=True)


def refuse_other_machines() -> None:
    """Stop the page here for a browser on another machine, unless serving the
    network was asked for.

    The server listens on 127.0.0.1 unless it was started wider on purpose
    (``.streamlit/config.toml`` and ``digits dashboard`` see to that). If it is
    reachable from other machines anyway (a ``STREAMLIT_SERVER_ADDRESS`` or a
    global config file left over), such a session sees a short explanation and
    nothing else: no sidebar, no page, whichever URL it opened first. The rules
    are ``digits.dashboard.network_allowed`` and ``refuse_client``.
    """
    allowed = dashboard.network_allowed()
    warning = dashboard.exposure_warning(st.get_option("server.address"), allowed)
    if warning is not None:
        _log_once(warning)
    client = st.context.ip_address
    if dashboard.refuse_client(client, allowed):
        st.set_page_config(page_title=APP_TITLE, layout="wide")
        st.title(APP_TITLE)
        st.error(dashboard.REFUSAL.format(client=client), icon=":material/block:")
        st.stop()


def sidebar() -> None:
    """The links to every page (each keeps the tab's client id, dataset and
    presenter mode in the URL), the presenter-mode toggle, then the live
    progress of this tab's jobs, if any."""
    params = tab_params()
    with st.sidebar:
        for script, label, icon in PAGES:
            st.page_link(script, label=label, icon=icon, query_params=params)
        presenter_toggle()
        _sidebar_job_status()


def page_header(label: str, caption: str, title: str | None = None) -> None:
    """What every page does first: refuse other machines, set the browser tab and
    the wide layout, draw the sidebar, then the title (``label`` unless ``title``
    is given) and a one-line explanation.

    ``label`` is the page's label in ``PAGES``.
    """
    refuse_other_machines()
    icon = next(icon for _, name, icon in PAGES if name == label)
    tab = APP_TITLE if label == PAGES[0][1] else f"{label} · {APP_TITLE}"
    st.set_page_config(page_title=tab, page_icon=icon, layout="wide")
    attach_tab()
    _sync_dataset_param()
    sidebar()
    page_style()
    st.title(title or label)
    st.caption(caption)


# -- projector sizes and presenter mode ----------------------------------------------

# The one place the dashboard styles Streamlit's own elements: each rule picks them
# by a stable data-testid or ARIA role. Everything else about fitting a projector
# (1024x768 up to 1920x1080) is layout: rows of metrics that wrap (metric_row),
# fewer columns where a page is narrow.
LAYOUT_CSS = """
/* A row of tabs wraps onto a second line, instead of hiding its last tabs behind
   a scroll arrow ("My handwriti..." on Evaluate at 1024 px wide). */
[data-testid=stTabs] [role=tablist] { flex-wrap: wrap; }
/* A metric's label takes a second line where its column is too narrow, instead
   of ending in "..." (Inspect's "Prediction for test image 0 (a 7)" in presenter
   mode with the sidebar open); the value stays on one line. */
[data-testid=stMetric] [data-testid=stMetricLabel] * { white-space: normal; }
/* Rows of inputs in a container keyed INPUTS (Train's hyperparameters) put their
   columns one under the other where two side by side would cut a select box's
   value ("sam" for "same" at 1024 px wide). */
.st-key-inputs [data-testid=stHorizontalBlock] { flex-wrap: wrap; }
.st-key-inputs [data-testid=stColumn] { flex: 1 1 10rem; min-width: 10rem; }
/* Draw's layer strips, pictures scaled to one width: sharp squares, not blurred. */
[class*="st-key-draw-strip-"] img { image-rendering: pixelated; }
"""
INPUTS = "inputs"  # the key of a container whose rows of inputs may stack
# Presenter mode: every text larger for the back of a classroom. Streamlit sizes
# its type (and its spacing) in rem, so this scales the whole page but the charts.
PRESENTER_CSS = """
html { font-size: 125%; }
"""


def presenter_toggle() -> bool:
    """The sidebar's "Presenter mode" toggle, kept in the URL (``?presenter=true``,
    so that a teacher can bookmark it) and across pages; returns whether it is on.
    """
    return st.toggle(
        "Presenter mode",
        key=PRESENTER_PARAM,
        persist_state="session",
        **URL_BOUND,
        help="Larger type for a projector, and the sidebar folded away (open it "
        "again with the arrow at the top left).",
    )


# Folds the sidebar away as a click on its own collapse button does. Streamlit
# applies st.set_page_config's initial_sidebar_state only in a browser where no
# one has opened or folded the sidebar by hand: after that, it keeps the person's
# last choice (in the browser's storage), whatever the page asks for.
FOLD_SIDEBAR_JS = """<script>{
  const sidebar = document.querySelector("[data-testid=stSidebar]");
  if (sidebar && sidebar.dataset.collapsed === "false") {
    sidebar.querySelector("[data-testid=stSidebarCollapseButton] button")?.click();
  }
}</script>"""


def page_style() -> None:
    """The layout rules, and presenter mode's if it is on: larger type, and the
    sidebar collapsed when presenter mode turns on or a page opens in it (a
    bookmark, a reload). The sidebar may be opened again meanwhile: it stays as
    the person leaves it until presenter mode turns on again."""
    presenter = bool(st.session_state.get(PRESENTER_PARAM))
    st.html(f"<style>{LAYOUT_CSS}{PRESENTER_CSS if presenter else ''}</style>")
    # Applied at the page's load, before it is drawn (no sidebar flashing by)...
    st.set_page_config(initial_sidebar_state="collapsed" if presenter else "auto")
    if presenter and not st.session_state.get(PRESENTER_FOLDED_KEY):
        with st.sidebar:  # ...and this once, whatever the browser remembers
            st.html(FOLD_SIDEBAR_JS, unsafe_allow_javascript=True)
    st.session_state[PRESENTER_FOLDED_KEY] = presenter


# -- browser tabs, their jobs and their URL ------------------------------------------

CLIENT_PARAM = "client"  # ?client=...: the browser tab's random id
DATASET_PARAM = "dataset"  # ?dataset=...: the Home page's choice, on every page
PRESENTER_PARAM = "presenter"  # ?presenter=true: presenter mode (presenter_toggle)
# What new_client_id makes (token_urlsafe's alphabet); anything else in the URL
# is replaced by a new id.
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
SIDEBAR_REFRESH = 1.0  # seconds between the sidebar's redraws while a job runs;
# each is also the tab's heartbeat (see digits.jobs.CLIENT_TIMEOUT)
# What the sidebar says of a job instead of its percentage while it waits or stops.
JOB_STATE_TEXT = {"queued": "waiting for a slot", "stopping": "stopping"}


@st.cache_resource(show_spinner=False)
def job_registry() -> jobs.JobRegistry:
    """The server's one registry of every browser tab's jobs."""
    return jobs.JobRegistry()


def new_client_id() -> str:
    """A random client id for a browser tab, for its URL."""
    return secrets.token_urlsafe(12)


def attach_tab() -> None:
    """Find which browser tab this session is, by the client id in its URL, and
    claim it (``digits.jobs.JobRegistry`` has the rule); keep the id in the URL.

    A session has a random token of its own. The client id read from the URL
    at the session's first run (a new one if there is none, or a malformed one)
    is the session's unless another session owns it: if that owner stopped
    running a few seconds ago, this is its tab after a reload, which takes the
    tab's jobs over; if the owner is alive (another tab, another person's shared
    link), this session gets a new client id, with the link's settings but none
    of its jobs. Telling the two apart may take a few seconds. Later runs keep
    the session's id, unless another session took the tab over meanwhile: then
    it moves to a new id (it never takes a tab back).
    """
    token = st.session_state.setdefault(TOKEN_KEY, secrets.token_urlsafe(16))
    known = st.session_state.get(CLIENT_KEY)
    registry = job_registry()
    if known is not None:
        client = known
        if not registry.rejoin(known, token):
            # Another session took this one's tab over while it did not run (a
            # reload elsewhere found it silent): the tab's jobs are that
            # session's now, and this one moves to a new tab id.
            for key in TAB_JOBS:
                st.session_state.pop(key, None)
            client = new_client_id()
            registry.claim(client, token)
    else:
        client = st.query_params.get(CLIENT_PARAM, "")
        if not CLIENT_ID.fullmatch(client):
            client = new_client_id()
        if registry.claim(client, token) == jobs.LIVE:
            with st.spinner("Reconnecting this browser tab to its jobs..."):
                client, _ = registry.attach(client, token, new_client_id)
    st.session_state[CLIENT_KEY] = client
    if st.query_params.get(CLIENT_PARAM) != client:
        st.query_params[CLIENT_PARAM] = client


def tab_params() -> dict[str, str]:
    """The query parameters every page's URL keeps: the client id, dataset and
    presenter mode."""
    params = {CLIENT_PARAM: st.session_state[CLIENT_KEY]}
    for name in (DATASET_PARAM, PRESENTER_PARAM):
        if name in st.query_params:
            params[name] = st.query_params[name]
    return params


def _sync_dataset_param() -> None:
    """The Home page's dataset choice in the URL (``?dataset=...``, nothing for
    the default), so that a reload or a shared link of any page uses the same
    dataset. The URL is read at the session's first run; a value that is not a
    choice is ignored."""
    if DATASET_KEY not in st.session_state:
        wanted = st.query_params.get(DATASET_PARAM)
        if wanted in DATASET_LABELS:
            st.session_state[DATASET_KEY] = wanted
    choice = st.session_state.get(DATASET_KEY, DEFAULT_DATASET)
    if choice == DEFAULT_DATASET:
        if DATASET_PARAM in st.query_params:
            del st.query_params[DATASET_PARAM]
    elif st.query_params.get(DATASET_PARAM) != choice:
        st.query_params[DATASET_PARAM] = choice


def tab_job(key: str) -> jobs.BackgroundJob | None:
    """This tab's job ``key`` (``JOB_KEY`` or ``SWEEP_JOB_KEY``), or None.

    The session holds it; after a reload, the new session finds it in the
    registry, under the tab's client id.
    """
    job = st.session_state.get(key)
    if job is None:
        job = job_registry().job(st.session_state[CLIENT_KEY], key)
        if job is not None:
            st.session_state[key] = job
    return job


def keep_job(key: str, job: jobs.BackgroundJob) -> None:
    """Make ``job`` this tab's job ``key``, in the session and the registry."""
    st.session_state[key] = job
    # The tab is the owner of its jobs in the line: one running at a time each.
    job.owned_by(st.session_state[CLIENT_KEY])
    job_registry().put(
        st.session_state[CLIENT_KEY], st.session_state[TOKEN_KEY], key, job
    )


def _job_progress(snap: jobs.JobProgress, what: str) -> bool:
    """A progress bar "``what``: 42%" if the job of ``snap`` has not finished
    (then True); nothing otherwise."""
    if snap.finished:
        return False
    state = JOB_STATE_TEXT.get(snap.status, f"{snap.fraction:.0%}")
    st.progress(snap.fraction, text=f"{what}: {state}")
    return True


def _sidebar_job_status() -> None:
    """This tab's jobs in the sidebar, redrawn every ``SIDEBAR_REFRESH`` seconds
    while one of them has not finished (on every page)."""
    running = any(
        job is not None and not job.snapshot().finished
        for job in map(tab_job, TAB_JOBS)
    )
    refresh = SIDEBAR_REFRESH if running else None
    st.fragment(run_every=refresh)(_job_status)(running)


def _job_status(refreshing: bool) -> None:
    """The progress of this tab's unfinished jobs, as far as they are now, or the
    last saved run. Each redraw is also the tab's heartbeat, which tells a
    reload from another live tab (``attach_tab``)."""
    job_registry().heartbeat(st.session_state[CLIENT_KEY], st.session_state[TOKEN_KEY])
    unfinished = False
    train, sweep = tab_job(JOB_KEY), tab_job(SWEEP_JOB_KEY)
    if train is not None:
        snap = train.snapshot()
        unfinished = _job_progress(snap, f"Training {train.spec.label}")
        if not unfinished and snap.run is not None:
            st.caption(f"Last run: {snap.run.name}")
    if sweep is not None:
        unfinished |= _job_progress(sweep.snapshot(), f"Sweep {sweep.sweep.name}")
    if refreshing and not unfinished:
        st.rerun()  # the whole page once more: the timers stop, Start is enabled


def chart(fig, caption: str | None = None, **kwargs):
    """A Plotly figure (``digits.figures``) without Plotly's toolbar, and its
    caption below; ``kwargs`` go to ``st.plotly_chart`` (a key, a selection
    mode). Returns what ``st.plotly_chart`` returns (the selection, if any)."""
    event = st.plotly_chart(fig, config={"displayModeBar": False}, **kwargs)
    if caption:
        st.caption(caption)
    return event


HOW_COMPUTED = "How this is computed"


def how_computed(*names: str, note: str | None = None) -> None:
    """For the curious: the functions of ``digits`` behind a section (each shown
    as code), and a one-line ``note``, in a collapsed "How this is computed"
    expander. The words on the page are for learners; code names go here."""
    with st.expander(HOW_COMPUTED):
        if names:
            st.caption("\n".join(f"- `{name}`" for name in names))
        if note:
            st.caption(note)


# When jobs meant for a Dask cluster train on the server instead (the reason,
# for whoever runs the cluster, goes in an expander below it).
TRAINS_HERE = (
    "The shared training computers (a Dask cluster) cannot take this job now, "
    "so it trains on this computer instead, which may take longer."
)


def queue_notice(snap: jobs.JobProgress, unit: str, what: str) -> None:
    """Where a job waiting for a training slot (``digits.slots``) stands in line
    and about how long it waits; and why it trains here although a Dask cluster
    was set, or that the cluster started it again (``digits.cluster``)."""
    if not snap.finished:
        # The job's own reason if it fell back, else the cluster's (one box:
        # they are often the same words).
        fallback = getattr(snap, "fallback", None)
        if fallback is None and snap.status in ("queued", "running"):
            fallback = cluster.notice()
        if fallback:
            st.warning(TRAINS_HERE, icon=":material/cloud_off:")
            with st.expander("Details for whoever runs the cluster"):
                st.markdown(fallback)
        notice = getattr(snap, "notice", None)
        if notice:
            st.warning(notice, icon=":material/restart_alt:")
    position = snap.queue_position
    if position is None:
        return
    where = "the cluster" if cluster.connected() else "this machine"
    wait = snap.queue_wait
    when = (
        f"It should start in about {humanize.duration(wait)}, by itself."
        if wait is not None
        else "It starts by itself when a slot frees up."
    )
    st.info(
        f"Waiting for a training slot: {where} trains "
        f"{slots.shared().capacity} {unit} at a time, and {position - 1 or 'no'} "
        f"other job(s) wait ahead of this {what}. {when}",
        icon=":material/hourglass_top:",
    )


def show_error(err: BaseException) -> None:
    """A user error as a red box with its message (never a traceback)."""
    st.error(str(err), icon=":material/error:")


def metric_row(*metrics: tuple):
    """A row of ``st.metric``, each a (label, value) or (label, value, help);
    returns the row, to put one more element at its end (a button).

    The row wraps: the metrics share its width, and those that do not fit whole
    beside the others (a narrow column at 1024 px wide, larger type in presenter
    mode) go on a new line, instead of being cut to "99.…" as in fixed columns.
    """
    row = st.container(
        horizontal=True, wrap=True, gap="small", vertical_alignment="center"
    )
    with row:
        for label, value, *help_ in metrics:
            st.metric(label, value, help=help_[0] if help_ else None)
    return row


def keep_notice(key: str, kind: str, text: str) -> None:
    """Keep a message (``kind`` "success", "warning" or "error") for the page's
    next run: a button's callback runs before the page, so it cannot show one."""
    st.session_state[key] = (kind, text)


def show_notice(key: str) -> None:
    """The message kept under ``key`` by ``keep_notice``, shown once."""
    kind, text = st.session_state.pop(key, (None, None))
    if kind is not None:
        getattr(st, kind)(text)


# -- datasets ----------------------------------------------------------------------


def _read_only(ds: data.Dataset) -> data.Dataset:
    """The dataset with its arrays locked: the cached copy is shared by everyone."""
    for array in ds[:4]:
        array.flags.writeable = False
    return ds


@st.cache_resource(max_entries=6, show_spinner="Loading the dataset...")
def _load_dataset(name: str) -> data.Dataset:
    return _read_only(data.load_dataset(name))


def _download(name: str) -> None:
    """Download dataset ``name`` with a progress bar; DownloadError if offline."""
    label = DATASET_LABELS.get(name, name)
    bar = st.progress(0.0, text=f"Downloading {label}...")

    def progress(done: int, total: int | None, filename: str) -> None:
        fraction = min(1.0, done / total) if total else 0.0
        size = f" of {total / 1e6:.1f} MB" if total else ""
        bar.progress(
            fraction, text=f"Downloading {filename}: {done / 1e6:.1f} MB{size}"
        )

    try:
        data.fetch(name, progress=progress)
    finally:
        bar.empty()


def dataset_name() -> str:
    """The name to load for this session's choice: a dataset name or a CSV path."""
    choice = st.session_state.get(DATASET_KEY, DEFAULT_DATASET)
    if choice == CSV_CHOICE:
        return st.session_state.get(CSV_KEY) or DEFAULT_DATASET
    return choice


def dataset_label(name: str) -> str:
    """A short label: "MNIST", or the uploaded CSV's original file name."""
    if name in DATASET_LABELS:
        return DATASET_LABELS[name]
    return f"CSV {Path(name).name.split('-', 1)[-1]}"


def shown_dataset_name() -> str:
    """The dataset the pages show: this session's choice, or scikit-learn's digits
    if the choice could not be downloaded."""
    name = dataset_name()
    if name in st.session_state.get(FALLBACK_KEY, {}):
        return FALLBACK_DATASET
    return name


def dataset_title() -> str:
    """Home's heading for the dataset shown: "Handwritten digits", "Clothing
    images"..."""
    name = shown_dataset_name()
    return DATASET_TITLES.get(name, CSV_TITLE)


def _dataset_line(name: str, wanted: str) -> None:
    """One line under the title saying which dataset the page uses; if it is the
    offline stand-in, why, with the download's error in a "Details" expander."""
    if name == wanted:
        st.caption(f"Dataset: **{dataset_label(name)}**, chosen on Home")
        return
    with st.container():
        # Short enough for one line at 1024x768 beside the sidebar.
        st.warning(
            f"{dataset_label(wanted)} could not be downloaded: using "
            f"{dataset_label(name)}.",
            icon=":material/wifi_off:",
        )
        with st.expander("Details"):
            st.code(
                st.session_state.get(FALLBACK_KEY, {}).get(wanted, ""),
                language=None,
                wrap_lines=True,
            )


def active_dataset() -> data.Dataset:
    """The dataset chosen on Home, loaded (and downloaded if need be), with a
    line saying which one it is.

    If the download fails, the session falls back to scikit-learn's digits (the
    page runs again at once, so that its title says so too) and a one-line
    warning says why; other data errors stop the page with the message.
    """
    wanted = dataset_name()
    uploaded = st.session_state.get(CSV_DATA_KEY)
    if uploaded is not None and uploaded.name == wanted:
        _dataset_line(wanted, wanted)
        return uploaded
    fallbacks = st.session_state.setdefault(FALLBACK_KEY, {})
    if wanted not in fallbacks and data.needs_download(wanted):
        try:
            _download(wanted)
        except DownloadError as err:
            fallbacks[wanted] = str(err)
            st.rerun()  # from the top: the title and every line follow the stand-in
        except DataError as err:
            show_error(err)
            st.stop()
    name = shown_dataset_name()
    _dataset_line(name, wanted)
    try:
        return _load_dataset(name)
    except DigitsError as err:
        show_error(err)
        st.stop()


def upload_bytes(upload, limit_mb: int) -> bytes:
    """The content of ``upload`` (a Streamlit ``UploadedFile``), if it is at most
    ``limit_mb`` MB; else a DigitsError that names the file and the limit.

    Streamlit's own limit depends on which config it read; this one holds always.
    """
    if upload.size > limit_mb * 2**20:
        raise DigitsError(
            f"{upload.name} is {upload.size / 2**20:.1f} MB, over the {limit_mb} MB "
            "limit for this upload. Use a smaller file."
        )
    return upload.getvalue()


def upload_name(content: bytes, filename: str) -> str:
    """The dataset name of an uploaded CSV: its content's hash and its file name."""
    digest = hashlib.sha256(content).hexdigest()[:16]
    safe = store.sanitize_name(Path(filename).stem) if filename else "upload"
    return str(UPLOAD_NAME_DIR / f"{digest}-{safe}.csv")


def load_uploaded_csv(content: bytes, filename: str) -> data.Dataset:
    """Load an uploaded CSV from memory (nothing of it is written to disk); a
    DataError names the file as the user knows it. The dataset is named by
    ``upload_name``."""
    ds = data.parse_csv(content, filename)
    return _read_only(ds._replace(name=upload_name(content, filename)))


def take_csv_upload(upload) -> None:
    """Make ``upload`` (the Home page's CSV) this session's dataset.

    Each file is read once: later reruns reuse the outcome. The dataset lives in
    this session's state only, so it goes when the session ends (Streamlit drops
    the uploaded bytes then too). Raises DigitsError, every time it is called for
    that file, if the file is too large or not a usable CSV.
    """
    file_id, error = st.session_state.get(CSV_UPLOAD_KEY, (None, None))
    if file_id != upload.file_id:
        try:
            ds = load_uploaded_csv(upload_bytes(upload, CSV_LIMIT_MB), upload.name)
        except DigitsError as err:
            error = str(err)
        else:
            error = None
            st.session_state[CSV_DATA_KEY] = ds
            st.session_state[CSV_KEY] = ds.name
        st.session_state[CSV_UPLOAD_KEY] = (upload.file_id, error)
    if error is not None:
        raise DigitsError(error)


# -- runs and models ---------------------------------------------------------------


def all_runs() -> tuple[list[store.Run], list[store.BrokenRun]]:
    """Every saved run (newest first, shipped ones last) and the broken ones."""
    return store.list_runs()


def runs_for(ds: data.Dataset) -> list[store.Run]:
    """The runs trained on ``ds`` (same dataset name and compatible shape)."""
    shape, k = ds.x_test.shape[1:], len(ds.class_names)
    return [
        run
        for run in all_runs()[0]
        if (run.meta.get("dataset") or {}).get("name") == ds.name
        and run.image_shape == tuple(shape)
        and len(run.class_names) == k
    ]


def digit_runs() -> list[store.Run]:
    """The runs that classify digits 0-9 in square images (for the Draw page)."""
    return [
        run
        for run in all_runs()[0]
        if run.class_names == data.DIGIT_NAMES
        and len(run.image_shape) == 2
        and run.image_shape[0] == run.image_shape[1]
    ]


def _version(run: store.Run) -> float:
    """When the run's metadata last changed: part of every cache key."""
    return (run.path / store.METADATA_FILE).stat().st_mtime


@st.cache_resource(max_entries=16, show_spinner="Loading the model...")
def _load_model(path: str, mtime: float, _run: store.Run):
    model = store.load_model(_run)
    # One throwaway prediction, so the first real one (a drawing) is not the one
    # that pays for first-touch memory and BLAS set-up.
    predict_one(model, np.zeros(_run.image_shape, np.float32), len(_run.class_names))
    return model


def load_model(run: store.Run):
    """The fitted model of ``run``, cached by run folder and modification time."""
    return _load_model(str(run.path), _version(run), run)


@st.cache_resource(max_entries=16, show_spinner="Measuring the validation digits...")
def _sure_thresholds(path: str, mtime: float, _run: store.Run) -> sure.Thresholds:
    return sure.thresholds_for(_run, load_model(_run))


def sure_thresholds(run: store.Run) -> sure.Thresholds:
    """When ``run``'s answers are sure (`digits.sure`), from its validation
    digits; cached like the model (and on disk by `digits.sure` itself)."""
    return _sure_thresholds(str(run.path), _version(run), run)


@st.cache_data(max_entries=32, show_spinner="Scoring the test set...")
def _predictions(
    path: str, mtime: float, checksum: str, _run: store.Run, _ds: data.Dataset
) -> np.ndarray:
    proba = store.predictions(_run, _ds)
    proba.flags.writeable = False
    return proba


def test_predictions(run: store.Run, ds: data.Dataset) -> np.ndarray:
    """Test-set probabilities (n_test, k) of ``run``, computed once and cached."""
    return _predictions(str(run.path), _version(run), ds.checksum, run, ds)


@st.cache_data(max_entries=32, show_spinner=False)
def _report(
    path: str, mtime: float, checksum: str, _ds: data.Dataset, _proba: np.ndarray
) -> dict:
    from digits import metrics

    return metrics.report(_ds.y_test, _proba, _ds.class_names)


def test_report(run: store.Run, ds: data.Dataset, proba: np.ndarray) -> dict:
    """``digits.metrics.report`` of ``run`` on the test set, cached."""
    return _report(str(run.path), _version(run), ds.checksum, ds, proba)


def test_scores(run: store.Run, ds: data.Dataset) -> tuple[np.ndarray, dict]:
    """``test_predictions`` and ``test_report`` of ``run``; stops the page with the
    message if the run cannot be scored."""
    try:
        proba = test_predictions(run, ds)
        return proba, test_report(run, ds, proba)
    except DigitsError as err:
        show_error(err)
        st.stop()


def group_sweeps(runs: Sequence[store.Run]) -> list[store.Run]:
    """``runs`` with each sweep's trials together, after the other runs: the
    others in their order (newest first, shipped last), then one sweep at a time
    (by name), its trials in their order."""
    own = [run for run in runs if run.sweep is None]
    trials = [run for run in runs if run.sweep is not None]
    return own + sorted(trials, key=lambda run: run.sweep)  # a stable sort


def offered_runs(
    runs: Sequence[store.Run], keep: Sequence[str], key: str
) -> list[store.Run]:
    """The runs a picker offers: without sweep trials unless its "Show sweep
    trials" toggle is on (or a trial is already chosen, named in ``keep``), the
    trials grouped by sweep. The toggle shows only when there are trials."""
    trials = [run for run in runs if run.sweep is not None]
    if not trials:
        return list(runs)
    show = st.toggle(
        f"Show sweep trials ({len(trials):,})",
        key=f"{key}-sweeps",
        help="Runs trained by a sweep on the Experiments page, grouped by sweep. "
        "They are hidden here unless you ask for them.",
    )
    if show or len(trials) == len(runs):
        return group_sweeps(runs)
    return [run for run in runs if run.sweep is None or run.name in keep]


def pick_run(label: str, runs: Sequence[store.Run], key: str, default: int = 0):
    """A select box of ``runs`` labelled by ``run_label``; returns the chosen run.

    Sweep trials are hidden unless asked for (``offered_runs``). The choice persists
    across pages; one that no longer exists (a run deleted, another dataset
    chosen) becomes ``runs[default]``.
    """
    runs = offered_runs(runs, [st.session_state.get(key)], key)
    by_name = {run.name: run for run in runs}
    if st.session_state.get(key) not in by_name:
        st.session_state[key] = runs[min(default, len(runs) - 1)].name
    name = st.selectbox(
        label,
        list(by_name),
        format_func=lambda n: run_label(by_name[n]),
        key=key,
        persist_state="session",
    )
    return by_name[name]


def pick_runs(
    label: str, runs: Sequence[store.Run], default: Sequence[str], key: str, **kw
) -> list[store.Run]:
    """A multiselect of ``runs`` labelled by ``run_label``, the names ``default``
    chosen at first; returns the chosen runs. ``kw`` go to ``st.multiselect``.
    Sweep trials are hidden unless asked for, as in ``pick_run``."""
    keep = [*default, *st.session_state.get(key, ())]
    by_name = {run.name: run for run in offered_runs(runs, keep, key)}
    names = st.multiselect(
        label,
        list(by_name),
        default=[name for name in default if name in by_name],
        format_func=lambda n: run_label(by_name[n]),
        key=key,
        **kw,
    )
    return [by_name[name] for name in names]


def run_label(run: store.Run) -> str:
    """ "default-cnn · CNN (NumPy) · 99.10%": name, kind and test accuracy; a
    sweep's trial starts with its sweep ("sweep-x ▸ s16-s0 · ..."), and the
    run's tags, if any, end it."""
    acc = run.test_accuracy
    score = f" · {acc:.2%}" if acc is not None else ""
    name = run.name
    if run.sweep:  # a trial's name starts with its sweep's: say it once
        name = f"{run.sweep} ▸ {name.removeprefix(run.sweep + '-')}"
    tags = f" · {', '.join(run.tags)}" if run.tags else ""
    return f"{name} · {registry.MODELS[run.kind].label}{score}{tags}"


def predict_one(model, image: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities (k,) for one preprocessed image (h, w)."""
    return store.predict_proba_full(model, image[None], n_classes)[0]


# -- hyperparameter widgets ---------------------------------------------------------

# A widget's value in the page's URL, as a query parameter named by its key (only
# when it is not the default; Streamlit ignores a value that is no option).
URL_BOUND = {"bind": "query-params"}
TRAIN_SIZES = (500, 1000, 2000, 5000, 10_000, 20_000, 30_000, 60_000)


def train_size_input(ds: data.Dataset, default: int, key: str) -> int:
    """A slider of training-set sizes (a random subset, for quick runs): those of
    ``TRAIN_SIZES`` below the number of ``ds``'s training images left once its
    validation images are held out, then all of them. ``default`` if offered,
    else all. ``key`` is suffixed with the dataset."""
    n_all = len(data.validation_split(ds).train)
    sizes = [n for n in TRAIN_SIZES if n < n_all] + [n_all]
    return st.select_slider(
        "Training images",
        sizes,
        value=default if default in sizes else n_all,
        format_func=lambda n: f"{n:,}",
        key=f"{key}-{ds.name}",
        persist_state="session",
        **URL_BOUND,
        help="How many images the model learns from: fewer train faster. The "
        "dataset's validation images are always kept apart from these.",
    )


# Labels for the two widgets of a "layers" hyperparameter: how many, and each width.
LAYER_LABELS = {
    "conv_channels": ("Conv blocks", "Channels of block {}"),
    "hidden_layer_sizes": ("Hidden layers", "Units of layer {}"),
}
# Their help: what the count means, and what each width means, in plain words.
LAYER_HELP = {
    "conv_channels": (
        "How many convolution blocks come first. Each slides small learned "
        "patterns (filters) over the image, then halves its size by keeping the "
        "largest value of each 2x2 square (max-pooling).",
        "How many filters this block learns: each looks for its own pattern and "
        "gives one channel, a map of where the pattern was found.",
    ),
    "hidden_layer_sizes": (
        "How many fully connected layers sit between the image and the answer; "
        "each unit of one looks at every value of the layer before.",
        "How many units this layer has: more can learn finer differences, but "
        "train slower.",
    ),
}
NUMBER_INPUT_RANGE = 1000  # int ranges wider than this get a number box, no slider
FINE_SLIDER_RANGE = 100  # int ranges wider than this get a slider of round values


def _log_options(low: float, high: float, default: float) -> list[float]:
    """1, 2, 5 times powers of ten from ``low`` to ``high``, plus ``default``."""
    values = {float(default)}
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = float(f"{mantissa}e{exponent}")
            if low <= value <= high:
                values.add(value)
    return sorted(values)


def _round_options(low: int, high: int, defaults: Sequence[int]) -> list[int]:
    """Powers of two from ``low`` to ``high``, plus the defaults."""
    values = {int(d) for d in defaults}
    value = 1
    while value <= high:
        if value >= low:
            values.add(value)
        value *= 2
    return sorted(values)


def hyperparameter_input(hp: registry.Hyperparameter, default, key: str):
    """The widget for ``hp`` (slider, select box, toggle...); returns its value.

    ``key`` prefixes the widget keys; values persist for the session, across page
    switches, and are kept in the URL (a query parameter named by the key, when
    the value is not ``default``; a bad value there is ignored). ``default`` is
    the value before the user touches the widget.
    """
    common = {"help": hp.help or None, "persist_state": "session", **URL_BOUND}
    if hp.type == "layers":
        return _layers_input(hp, tuple(default or ()), key, common)
    if hp.type == "bool":
        return st.toggle(hp.label, value=bool(default), key=key, **common)
    if hp.type == "choice":
        options = list(hp.choices)
        index = options.index(default) if default in options else 0
        labels = dict(zip(options, hp.choice_labels or options, strict=True))
        return st.selectbox(
            hp.label,
            options,
            index=index,
            key=key,
            format_func=lambda v: str(labels[v]),
            **common,
        )
    if hp.type == "log":
        return st.select_slider(
            hp.label,
            _log_options(hp.low, hp.high, default),
            value=float(default),
            format_func=lambda v: f"{v:g}",
            key=key,
            **common,
        )
    if hp.type == "int":
        low, high = int(hp.low), int(hp.high)
        if high - low > NUMBER_INPUT_RANGE:
            return st.number_input(
                hp.label, low, high, int(default), step=1, key=key, **common
            )
        if high - low > FINE_SLIDER_RANGE:
            options = _round_options(low, high, [default])
            return st.select_slider(
                hp.label, options, value=int(default), key=key, **common
            )
        return st.slider(hp.label, low, high, int(default), key=key, **common)
    return st.slider(
        hp.label, float(hp.low), float(hp.high), float(default), 0.05, key=key, **common
    )


def _layers_input(hp, default: tuple, key: str, common: dict) -> tuple[int, ...]:
    """How many layers, then one width slider per layer."""
    count_label, width_label = LAYER_LABELS.get(hp.name, (hp.label, hp.label + " {}"))
    count_help, width_help = LAYER_HELP.get(hp.name, (common["help"], None))
    n = st.slider(
        count_label,
        1,
        hp.max_layers,
        max(1, min(len(default), hp.max_layers)),
        key=f"{key}-n",
        **{**common, "help": count_help},
    )
    options = _round_options(int(hp.low), int(hp.high), default)
    fallback = default[-1] if default else options[len(options) // 2]
    return tuple(
        st.select_slider(
            width_label.format(i + 1),
            options,
            value=default[i] if i < len(default) else fallback,
            key=f"{key}-{i}",
            help=width_help,
            persist_state="session",
            **URL_BOUND,
        )
        for i in range(n)
    )


# -- images ------------------------------------------------------------------------


def gallery(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    empty: str,
) -> None:
    """Images of ``figures.GALLERY_PIXELS`` each, as many to a row as the window
    holds (4 at 1024 px wide with the sidebar open, 11 at 1920 px), each with its
    (markdown) caption below: large enough to read from the back of a room.

    ``empty`` is shown instead when there are no images.
    """
    if len(images) == 0:
        st.info(empty)
        return
    with st.container(horizontal=True, wrap=True, gap="small"):
        for image, caption in zip(images, captions, strict=True):
            with st.container(width=figures.GALLERY_PIXELS, gap=None):
                st.image(figures.enlarge(image), width=figures.GALLERY_PIXELS)
                st.caption(caption)


# -- one pixel of a feature map, worked out (Draw and Inspect) ----------------------


MAP_CHART_WIDTH = figures.PIXEL_FIGURE + 100  # an enlarged map and its colour bar
ARITHMETIC_GAPS = 60  # pixels between the three grids of one pixel's arithmetic


def _pixel_keys(prefix: str, run_name: str) -> dict[str, str]:
    """The session keys of ``conv_pixel_section`` on page ``prefix`` for a model:
    its layer and map pickers, and the pixel clicked last."""
    base = f"{prefix}-pixel-{run_name}"
    return {"layer": f"{base}-layer", "map": f"{base}-map", "pixel": base}


def strip_clicks(prefix: str, run_name: str, layer: str, chart_key: str) -> dict:
    """``chart``'s arguments that make a ``figures.layer_strip`` of ``layer``
    (key ``chart_key``) pick, when one of its maps is clicked, the map that
    ``conv_pixel_section`` enlarges."""

    def picked() -> None:
        channel = figures.clicked_point(st.session_state.get(chart_key))
        if channel is not None:
            keys = _pixel_keys(prefix, run_name)
            st.session_state[keys["layer"]] = layer
            st.session_state[keys["map"]] = channel
            st.session_state.pop(keys["pixel"], None)

    return dict(key=chart_key, on_select=picked, selection_mode=("points",))


def conv_pixel_section(
    prefix: str, run: store.Run, model, image: np.ndarray, outputs, what: str
) -> None:
    """One feature map of ``model`` reading ``image`` (h, w), enlarged, and what
    its clicked pixel computed, with the real numbers: the window of the input it
    read, the kernel, the products, their sum, the bias and what follows (pooling,
    ReLU). ``outputs`` are the layers shown (``explain.LayerOutput``; those with
    maps can be picked), ``what`` names the image for learners ("your digit");
    ``prefix`` keeps each page's choices apart."""
    maps = {o.name: o.values for o in outputs if o.values.ndim == 3}
    if not maps:
        return
    keys = _pixel_keys(prefix, run.name)
    if st.session_state.get(keys["layer"]) not in maps:  # none yet, or new model
        st.session_state[keys["layer"]] = None
    with st.container(horizontal=True, vertical_alignment="bottom"):
        # Nothing enlarged until a map is picked: the enlarged map, clickable
        # pixel by pixel, is the costliest chart to draw (~165 ms a stroke on Draw).
        layer = st.selectbox(
            "Layer",
            list(maps),
            index=None,
            placeholder="Pick a layer",
            key=keys["layer"],
            help="A conv layer, or the pooling and ReLU after one.",
        )
        if layer is None:
            return
        n = maps[layer].shape[-1]
        if st.session_state.get(keys["map"]) not in range(n):
            st.session_state[keys["map"]] = int(maps[layer].max(axis=(0, 1)).argmax())
        channel = int(
            st.number_input(
                f"Map (0 to {n - 1})",
                0,
                n - 1,
                step=1,
                key=keys["map"],
                help="Which of the layer's maps to enlarge (one per filter); it "
                "starts at the most active.",
            )
        )
    values = maps[layer][..., channel]  # (h, w)
    shown = (layer, channel)
    chart_key = f"{prefix}-map-{run.name}-{layer}-{channel}"  # new map, new selection

    def picked() -> None:
        index = figures.clicked_point(st.session_state.get(chart_key))
        pixel = None if index is None else (*shown, *divmod(index, values.shape[1]))
        st.session_state[keys["pixel"]] = pixel

    chart(
        figures.feature_map(values),
        f"Map {channel} of {layer} for {what}, enlarged. Click one of its pixels "
        "to see what it computed, number by number.",
        width=MAP_CHART_WIDTH,  # the map and its colour bar, not the whole page
        key=chart_key,
        on_select=picked,
        selection_mode=("points",),
    )
    picked_pixel = st.session_state.get(keys["pixel"])
    if not picked_pixel or tuple(picked_pixel[:2]) != shown:
        return
    row, col = picked_pixel[2:]
    try:
        px = explain.conv_pixel(model, image, layer, row, col, channel)
    except DigitsError as err:
        show_error(err)
        return
    _conv_arithmetic(prefix, px, what)


def _conv_arithmetic(prefix: str, px: explain.ConvPixel, what: str) -> None:
    """``px`` (``explain.conv_pixel``) number by number: the window, kernel and
    products of one input map, then the sum, the bias, pooling and activation."""
    k, _, c_in = px.window.shape
    st.markdown(
        f"#### One pixel of {px.layer}: map {px.channel}, row {px.row}, column {px.col}"
    )
    st.caption(
        f"The convolution **{px.conv}** read a {k}x{k} window of "
        + (what if c_in == 1 else f"each of the {c_in} maps before it")
        + f" (at row {px.conv_row}, column {px.conv_col} of its output), "
        "multiplied it number by number with filter "
        f"{px.channel}'s weights (its kernel), and added up the products."
    )
    input_map = 0
    if c_in > 1:
        share = px.products.sum(axis=(0, 1))  # (C_in,) each input map's part
        input_map = st.selectbox(
            "Input map shown",
            range(c_in),
            index=int(np.abs(share).argmax()),
            format_func=lambda m: f"Map {m} (its products add up to {share[m]:.3f})",
            key=f"{prefix}-pixel-input-map",
        )
    chart(
        figures.conv_arithmetic(
            px.window[..., input_map],
            px.kernel[..., input_map],
            px.products[..., input_map],
            ["Window it read", "Kernel (weights)", "Products"],
        ),
        # As wide as its three grids: across a wide page they shrank to the
        # figure's height with wide gaps between them.
        width=3 * k * figures.CONV_CELL + ARITHMETIC_GAPS,
        key=f"{prefix}-pixel-arithmetic",
    )
    lines = [
        f"Sum of all {px.products.size} products: **{px.total:.4f}**",
        f"plus the bias {px.bias:+.4f}: **{px.pre_activation:.4f}**, "
        f"the convolution's output ({px.conv})",
    ]
    for name, kind, value in px.steps[1:]:
        if kind == "MaxPool2D":
            square = ", ".join(f"{v:.4f}" for v in px.pooled.ravel())
            lines.append(
                f"max pooling keeps the largest of the 2x2 square ({square}): "
                f"**{value:.4f}** ({name})"
            )
        elif kind == "ReLU":
            lines.append(f"ReLU keeps it if positive, else 0: **{value:.4f}** ({name})")
        else:
            lines.append(f"{kind}: **{value:.4f}** ({name})")
    st.markdown("\n".join(f"{i}. {line}" for i, line in enumerate(lines, start=1)))
    st.caption(f"Shown on the map you clicked: {px.activation:.4f}.")
    how_computed(
        "digits.explain.conv_pixel",
        note="The window, kernel and bias are the layer's own input and weights; "
        "the sum plus the bias equals the network's own output at that pixel.",
    )


# -- my handwriting ----------------------------------------------------------------


def saved_drawings(hw_store: handwriting.HandwritingStore) -> handwriting.Drawings:
    """The user's saved drawings. A damaged store is reported (it was kept aside and
    a fresh one begun, see ``digits.handwriting``); other errors stop the page."""
    try:
        return hw_store.load()
    except HandwritingCorrupt as err:
        show_error(err)
        return hw_store.load()
    except HandwritingError as err:
        show_error(err)
        st.stop()
