"""Experiments: sweep depth and width over a few seeds, then compare the results."""

import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

import ui
from digits import experiments, registry, slots
from digits.errors import DigitsError

JOB_KEY = "sweep-job"  # this session's digits.experiments.SweepJob
SHOWN_KEY = "experiments-shown"  # the sweep whose results are shown
REFRESH_SECONDS = 1.0
CONV_OPTIONS = [(), (16,), (32,), (32, 64), (32, 64, 128)]
HIDDEN_OPTIONS = [(30,), (100,), (128, 64)]
# 'same' padding, so that three 5x5 conv blocks fit 28x28 images (28, 14, 7, 3).
FIXED = {"cnn": {"padding": "same"}}
TRAIN_SIZES = (500, 1000, 2000, 5000, 10_000, 20_000, 60_000)
STATE_LABELS = {
    "waiting": "waiting",
    "running": "training",
    "scoring": "scoring the test set",
    "done": "done",
    "earlier": "done earlier",
    "failed": "failed",
}
COLORS = qualitative.Plotly
CHART_HEIGHT = 330
LAYOUT = dict(
    height=CHART_HEIGHT,
    margin=dict(l=10, r=10, t=40, b=10),
    legend=dict(orientation="h", y=-0.3),
)


def _layers(value) -> str:
    return "none" if not value else " → ".join(map(str, value))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    return (
        f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
    )


# -- charts --------------------------------------------------------------------------


def _by(summary: list[dict], key: str) -> dict:
    groups: dict = {}
    for row in summary:
        groups.setdefault(row[key], []).append(row)
    return groups


def against(summary: list[dict], x: str, group: str, title: str) -> go.Figure:
    """Mean test accuracy against ``x`` (depth or width), ± one standard deviation
    across seeds, one line per value of ``group``."""
    fig = go.Figure()
    for i, (value, rows) in enumerate(sorted(_by(summary, group).items())):
        rows = sorted(rows, key=lambda r: r[x])
        fig.add_scatter(
            x=[r[x] for r in rows],
            y=[r["accuracy_mean"] for r in rows],
            error_y=dict(type="data", array=[r["accuracy_std"] for r in rows]),
            text=[r["label"] for r in rows],
            hovertemplate="%{text}<br>accuracy %{y:.2%}<extra></extra>",
            mode="lines+markers",
            name=f"{group} {value}",
            line=dict(color=COLORS[i % len(COLORS)]),
        )
    fig.update_layout(title=title, **LAYOUT)
    # Categories: only the values tried, evenly spaced, even if there is one.
    values = sorted({r[x] for r in summary})
    fig.update_xaxes(
        title=x, type="category", categoryorder="array", categoryarray=values
    )
    fig.update_yaxes(title="test accuracy", tickformat=".1%")
    return fig


def pareto(summary: list[dict], x: str, title: str, log_x: bool) -> go.Figure:
    """Mean accuracy against a cost, the Pareto front joined by a line."""
    cost = [r[x] for r in summary]
    acc = [r["accuracy_mean"] for r in summary]
    front = experiments.pareto_front(cost, acc)
    fig = go.Figure()
    best = sorted((c, a) for c, a, f in zip(cost, acc, front, strict=True) if f)
    fig.add_scatter(
        x=[c for c, _ in best],
        y=[a for _, a in best],
        mode="lines",
        name="Pareto front",
        line=dict(color="#d62728", dash="dot"),
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=cost,
        y=acc,
        error_y=dict(type="data", array=[r["accuracy_std"] for r in summary]),
        mode="markers",
        marker=dict(
            size=11,
            color=["#d62728" if f else "#1f77b4" for f in front],
            symbol=["star" if f else "circle" for f in front],
        ),
        text=[r["label"] for r in summary],
        hovertemplate="%{text}<br>%{x:,.3g}<br>accuracy %{y:.2%}<extra></extra>",
        name="configuration (★ on the front)",
    )
    fig.update_layout(title=title, **LAYOUT)
    fig.update_xaxes(title=x.replace("_", " "), type="log" if log_x else None)
    fig.update_yaxes(title="test accuracy", tickformat=".1%")
    return fig


def loss_curves(rows: list[dict]) -> go.Figure:
    """Training loss of every trial (running mean within each epoch)."""
    fig = go.Figure()
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for row in rows:
        curve = row.get("curve") or []
        i = labels.index(row["label"])
        fig.add_scatter(
            x=[p[0] for p in curve],
            y=[p[1] for p in curve],
            mode="lines",
            name=row["label"],
            legendgroup=row["label"],
            showlegend=row["seed"]
            == min(r["seed"] for r in rows if r["label"] == row["label"]),
            line=dict(color=COLORS[i % len(COLORS)], width=1.5),
            hovertemplate=f"{row['label']} seed {row['seed']}<br>"
            "epoch %{x:.2f}<br>loss %{y:.3f}<extra></extra>",
        )
    fig.update_layout(title="Training loss, every trial", **LAYOUT)
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="loss", type="log")
    return fig


def results(rows: list[dict]) -> None:
    """The charts and the table of a sweep's finished trials."""
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        st.info("No trial has finished yet: the charts appear as trials finish.")
        return
    summary = experiments.summarise(done)
    st.caption(
        "Each point is a configuration: the mean test accuracy over its seeds, "
        "with a bar of ± one standard deviation. Depth counts hidden layers (conv "
        "blocks + dense); width is the units of the widest dense layer."
    )
    left, right = st.columns(2)
    left.plotly_chart(
        against(summary, "depth", "width", "Accuracy against depth"),
        config={"displayModeBar": False},
    )
    right.plotly_chart(
        against(summary, "width", "depth", "Accuracy against width"),
        config={"displayModeBar": False},
    )
    st.caption(
        "The Pareto front (★, dotted) joins the configurations that no other is "
        "both cheaper and more accurate than."
    )
    left, right = st.columns(2)
    left.plotly_chart(
        pareto(summary, "seconds_mean", "Accuracy against training time (s)", False),
        config={"displayModeBar": False},
    )
    right.plotly_chart(
        pareto(summary, "n_params", "Accuracy against parameters", True),
        config={"displayModeBar": False},
    )
    st.plotly_chart(loss_curves(done), config={"displayModeBar": False})
    st.caption("Every trial, one row each; the run is saved in the store under Run.")
    st.dataframe(
        [
            {
                "Configuration": r["label"],
                "Seed": r["seed"],
                "Conv": _layers(r["conv_channels"]),
                "Hidden": _layers(r["hidden_layer_sizes"]),
                "Parameters": r.get("n_params"),
                "Test accuracy": r.get("test_accuracy"),
                "Test loss": r.get("test_loss"),
                "Training (s)": r.get("train_seconds"),
                "Status": r["status"] + (f": {r['error']}" if r.get("error") else ""),
                "Run": r.get("run"),
            }
            for r in rows
        ],
        column_config={
            "Test accuracy": st.column_config.NumberColumn(format="percent"),
            "Test loss": st.column_config.NumberColumn(format="%.4f"),
            "Training (s)": st.column_config.NumberColumn(format="%.1f"),
            "Parameters": st.column_config.NumberColumn(format="localized"),
        },
        hide_index=True,
    )


# -- the running sweep -------------------------------------------------------------


def live(job: experiments.SweepJob, refreshing: bool) -> None:
    """Progress of every trial, the Stop button, and the results so far."""
    snap = job.snapshot()
    if refreshing and snap.finished:
        st.rerun()  # once more as a whole page: stops the timer, enables Start
    done = sum(t["state"] in ("done", "earlier", "failed") for t in snap.trials)
    status = {
        "queued": "waiting for a training slot",
        "stopping": "stopping after the current batches...",
    }.get(snap.status, snap.status)
    estimate = f" of ~{_duration(snap.estimate)}" if snap.estimate else ""
    st.progress(
        snap.fraction,
        text=f"Sweep {job.sweep.name}: {done} of {len(snap.trials)} trials · "
        f"{status} · {_duration(snap.elapsed)}{estimate}",
    )
    if snap.queue_position is not None:
        st.info(
            f"Waiting for a training slot: this machine trains "
            f"{slots.shared().capacity} job(s) at a time, and "
            f"{(snap.queue_position - 1) or 'no'} other job(s) wait ahead of this "
            "sweep. It starts by itself when a slot frees up.",
            icon=":material/hourglass_top:",
        )
    if snap.status == "failed":
        st.error(snap.error, icon=":material/error:")
    elif snap.status == "stopped":
        st.warning(
            "Stopped: the finished trials are kept. Start the same sweep again to "
            "run the rest.",
            icon=":material/stop_circle:",
        )
    st.button(
        "Stop",
        key="sweep-stop",
        icon=":material/stop_circle:",
        on_click=job.stop,
        disabled=snap.status not in ("queued", "running"),
        help="Stops the running trials after their current batch; finished "
        "trials are kept.",
    )
    st.caption("Every trial of the sweep: its progress and, once done, its accuracy.")
    st.dataframe(
        [
            {
                "Configuration": t["label"],
                "Seed": t["seed"],
                "State": STATE_LABELS.get(t["state"], t["state"]),
                "Progress": t["fraction"],
                "Test accuracy": t["test_accuracy"],
            }
            for t in snap.trials
        ],
        column_config={
            "Progress": st.column_config.ProgressColumn(min_value=0, max_value=1),
            "Test accuracy": st.column_config.NumberColumn(format="percent"),
        },
        hide_index=True,
    )
    results(snap.rows)


def start(sweep, ds, n_jobs: int, estimate) -> None:
    """A new sweep job for this session, with the grid of this very run of the
    page (not an ``on_click`` callback, whose arguments would be those of the last
    run that drew the button: a grid changed just before the click would be lost).
    """
    current = st.session_state.get(JOB_KEY)
    if current is not None and not current.snapshot().finished:
        return
    st.session_state[JOB_KEY] = experiments.SweepJob(
        sweep, ds, n_jobs=n_jobs, plan_estimate=estimate
    ).start()
    st.session_state[SHOWN_KEY] = sweep.name


# -- the page ----------------------------------------------------------------------

ui.page_header(
    "Experiments",
    "Train a grid of depths and widths for a few seeds each, in parallel, and "
    "compare accuracy, training time and size. You may switch pages while it runs.",
)
ds = ui.active_dataset()
job = st.session_state.get(JOB_KEY)
running = job is not None and not job.snapshot().finished

controls, view = st.columns([1, 1.6], gap="large")
with controls:
    st.subheader("Grid")
    kinds = [k for k in registry.MODELS if k != "dense"]  # cnn with conv () is dense
    kind = st.selectbox(
        "Model",
        kinds,
        format_func=lambda name: registry.MODELS[name].label,
        key="sweep-kind",
        persist_state="session",
    )
    grid = {}
    if "conv_channels" in {hp.name for hp in registry.get(kind).hyperparameters}:
        grid["conv_channels"] = st.multiselect(
            "Conv channels (depth)",
            CONV_OPTIONS,
            default=[(), (16,), (32, 64)],
            format_func=_layers,
            key="sweep-conv",
            persist_state="session",
            help="One entry per conv + 2x2 max-pool block (5x5 kernels, 'same' "
            "padding); none is a dense network.",
        )
    grid["hidden_layer_sizes"] = st.multiselect(
        "Hidden layers (width)",
        HIDDEN_OPTIONS,
        default=[(100,)],
        format_func=_layers,
        key="sweep-hidden",
        persist_state="session",
        help="Units of each fully connected hidden layer.",
    )
    left, right = st.columns(2)
    n_seeds = left.number_input(
        "Seeds", 1, 5, 2, key="sweep-seeds", persist_state="session"
    )
    epochs = right.number_input(
        "Epochs", 1, 10, 1, key="sweep-epochs", persist_state="session"
    )
    sizes = [n for n in TRAIN_SIZES if n < len(ds.x_train)] + [len(ds.x_train)]
    n_train = st.select_slider(
        "Training images",
        sizes,
        value=2000 if 2000 in sizes else sizes[-1],
        format_func=lambda n: f"{n:,}",
        key=f"sweep-size-{ds.name}",
        persist_state="session",
    )

with view:
    sweep = estimate = None
    try:
        sweep = experiments.plan(
            kind,
            grid,
            dataset=ds.name,
            seeds=range(int(n_seeds)),
            train_size=n_train,
            params={"max_iter": int(epochs), **FIXED.get(kind, {})},
        )
    except DigitsError as err:
        ui.show_error(err)
    if sweep is not None:
        n_jobs = st.segmented_control(
            "Trials at once",
            [1, 2],
            default=experiments.default_n_jobs(len(sweep.trials)),
            key="sweep-jobs",
            help="2: two trials in parallel, one core each. 1: one after another, "
            "two threads each.",
        ) or experiments.default_n_jobs(len(sweep.trials))
        try:
            # A damaged results table is named here, and Start stays disabled.
            done = {r["key"] for r in experiments.read_results(sweep.results_path)}
            # Not while a sweep runs: the timing would compete with it.
            if not running:
                with st.spinner("Timing a few batches of each configuration..."):
                    estimate = experiments.estimate(sweep, ds, n_jobs, skip=done)
        except DigitsError as err:
            ui.show_error(err)
        if estimate is not None:
            cols = st.columns(3)
            cols[0].metric("Trials to run", f"{len(sweep.trials) - len(done)}")
            cols[1].metric(
                "Estimated time",
                f"≈ {_duration(estimate.seconds)}",
                help="Measured on this machine by timing a few batches of each "
                "configuration, with the trials spread over the parallel workers.",
            )
            cols[2].metric(
                "Threads per trial",
                estimate.threads,
                help="Each trial's threads (CNN trainer and BLAS), so that the "
                "trials at once never want more cores than the machine has.",
            )
            if done:
                st.caption(
                    f"{len(done & {t.key for t in sweep.trials})} trial(s) of this "
                    "grid are already done and will be skipped."
                )
    if st.button(
        "Start sweep",
        key="sweep-start",
        type="primary",
        icon=":material/play_arrow:",
        disabled=running or estimate is None or not estimate.n_todo,
        help="A sweep is already running." if running else None,
    ):
        start(sweep, ds, n_jobs if sweep else 1, estimate)
        st.rerun()

st.divider()
if job is not None and job.sweep.name == st.session_state.get(SHOWN_KEY):
    st.subheader("Progress and results")
    st.fragment(run_every=REFRESH_SECONDS if running else None)(live)(job, running)
else:
    saved = experiments.list_sweeps()
    if not saved:
        st.info(
            "Choose the grid and press **Start sweep**: each trial's progress, "
            "then the charts, appear here."
        )
    else:
        st.subheader("Results")
        path = st.selectbox(
            "Sweep",
            saved,
            format_func=lambda p: p.parent.name,
            key="sweep-saved",
            help="Sweeps saved on this machine, newest first.",
        )
        try:
            results(experiments.read_results(path))
        except DigitsError as err:
            ui.show_error(err)
