"""Experiments: sweep depth and width over a few seeds, then compare the results.

The grid is kept in the URL, and the sweep under the browser tab's client id
(``ui.tab_job``), so a reload shows the same grid and the running sweep.
"""

import streamlit as st

import ui
from digits import experiments, figures, humanize, registry
from digits.errors import DigitsError

JOB_KEY = ui.SWEEP_JOB_KEY  # this tab's digits.experiments.SweepJob
SHOWN_KEY = "experiments-shown"  # the sweep whose results are shown
REFRESH_SECONDS = 1.0
CONV_OPTIONS = [(), (16,), (32,), (32, 64), (32, 64, 128)]
HIDDEN_OPTIONS = [(30,), (100,), (128, 64)]
# 'same' padding, so that three 5x5 conv blocks fit 28x28 images (28, 14, 7, 3).
FIXED = {"cnn": {"padding": "same"}}
DEFAULT_TRAIN_SIZE = 2000
STATE_LABELS = {
    "waiting": "waiting",
    "running": "training",
    "scoring": "scoring the test set",
    "done": "done",
    "earlier": "done earlier",
    "failed": "failed",
}
AGAINST = (("depth", "width"), ("width", "depth"))  # x axis, one line per value of
PARETO = (  # the cost on the x axis, the chart's title, a log x axis
    ("seconds_mean", "Accuracy against training time (s)", False),
    ("n_params", "Accuracy against parameters", True),
)


def _layers(value) -> str:
    return "none" if not value else " → ".join(map(str, value))


def results(rows: list[dict]) -> None:
    """The charts and the table of a sweep's finished trials."""
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        st.info("No trial has finished yet: the charts appear as trials finish.")
        return
    summary = experiments.summarise(done)
    score = experiments.compared_by(summary)
    on = (
        "the validation images (training images held out, never learned from)"
        if score[0] == "val_mean"
        else "the test images (this sweep was run before validation accuracy was "
        "recorded)"
    )
    st.caption(
        f"Each point is a configuration: its mean accuracy over its seeds on {on}, "
        "with a bar of ± one standard deviation. Configurations are compared on "
        "validation images so that the test images stay unseen until the final "
        "score, in the table below. Depth counts hidden layers (conv blocks + "
        "dense); width is the units of the widest dense layer."
    )
    for col, (x, group) in zip(st.columns(2), AGAINST, strict=True):
        fig = figures.accuracy_against(
            summary, x, group, f"Accuracy against {x}", score
        )
        with col:
            ui.chart(fig)
    st.caption(
        "The Pareto front (★, dotted) joins the best buys: the configurations that "
        "no other beats on both cost (training time or size) and accuracy."
    )
    for col, (cost, title, log_x) in zip(st.columns(2), PARETO, strict=True):
        front = experiments.pareto_front(
            [r[cost] for r in summary], [r[score[0]] for r in summary]
        )
        with col:
            ui.chart(figures.pareto(summary, cost, front, title, log_x, score))
    ui.chart(
        figures.loss_curves(done),
        "Each trial's loss on its training images as it learned, epoch by epoch: "
        "one colour per configuration, its seeds alike.",
    )
    ui.how_computed(
        "digits.experiments.summarise",
        "digits.experiments.compared_by",
        "digits.experiments.pareto_front",
    )
    st.caption(
        "Every trial, one row each. Each is saved as a model under the name in "
        "Run: the other pages list it when you turn on Show sweep trials."
    )
    st.dataframe(
        [
            {
                "Configuration": r["label"],
                "Seed": r["seed"],
                "Conv": _layers(r["conv_channels"]),
                "Hidden": _layers(r["hidden_layer_sizes"]),
                "Parameters": r.get("n_params"),
                "Validation accuracy": r.get("val_accuracy"),
                "Test accuracy": r.get("test_accuracy"),
                "Test loss": r.get("test_loss"),
                "Training (s)": r.get("train_seconds"),
                "Status": r["status"] + (f": {r['error']}" if r.get("error") else ""),
                "Run": r.get("run"),
            }
            for r in rows
        ],
        column_config={
            "Validation accuracy": st.column_config.NumberColumn(format="percent"),
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
    estimate = f" of ~{humanize.duration(snap.estimate)}" if snap.estimate else ""
    st.progress(
        snap.fraction,
        text=f"Sweep {job.sweep.name}: {done} of {len(snap.trials)} trials · "
        f"{status} · {humanize.duration(snap.elapsed)}{estimate}",
    )
    ui.queue_notice(snap, "job(s)", "sweep")
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
    st.caption(
        "Every trial of the sweep: its progress and, once done, its accuracy on "
        "the test images."
    )
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
    current = ui.tab_job(JOB_KEY)
    if current is not None and not current.snapshot().finished:
        return
    ui.keep_job(
        JOB_KEY,
        experiments.SweepJob(sweep, ds, n_jobs=n_jobs, plan_estimate=estimate).start(),
    )
    st.session_state[SHOWN_KEY] = sweep.name


# -- the page ----------------------------------------------------------------------

ui.page_header(
    "Experiments",
    "Train a grid of depths and widths for a few seeds each, in parallel, and "
    "compare accuracy, training time and size. You may switch pages while it runs.",
)
ds = ui.active_dataset()
job = ui.tab_job(JOB_KEY)  # this tab's, even after a reload
running = job is not None and not job.snapshot().finished
if job is not None:  # after a reload, the session starts without the sweep shown
    st.session_state.setdefault(SHOWN_KEY, job.sweep.name)

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
        **ui.URL_BOUND,
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
            **ui.URL_BOUND,
            help="The stacks of conv blocks to try. Each number is one block "
            "(5x5 filters, then a 2x2 max-pool) and how many filters it learns; "
            "none is a network without convolutions.",
        )
    grid["hidden_layer_sizes"] = st.multiselect(
        "Hidden layers (width)",
        HIDDEN_OPTIONS,
        default=[(100,)],
        format_func=_layers,
        key="sweep-hidden",
        persist_state="session",
        **ui.URL_BOUND,
        help="The fully connected layers to try. Each number is one layer and "
        "how many units it has.",
    )
    left, right = st.columns(2)
    n_seeds = left.number_input(
        "Seeds",
        1,
        5,
        2,
        key="sweep-seeds",
        persist_state="session",
        **ui.URL_BOUND,
        help="How many times to train each configuration, each time from other "
        "random starting weights: the spread shows how much is luck.",
    )
    epochs = right.number_input(
        "Epochs",
        1,
        10,
        1,
        key="sweep-epochs",
        persist_state="session",
        **ui.URL_BOUND,
        help="How many times each trial goes through its training images.",
    )
    n_train = ui.train_size_input(ds, DEFAULT_TRAIN_SIZE, "sweep-size")

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
            **ui.URL_BOUND,
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
            ui.metric_row(
                ("Trials to run", f"{estimate.n_todo}"),
                (
                    "Estimated time",
                    f"≈ {humanize.duration(estimate.seconds)}",
                    "Measured on this machine by timing a few batches of each "
                    "configuration, with the trials spread over the parallel workers.",
                ),
                (
                    "Threads per trial",
                    estimate.threads,
                    "Each trial's threads (CNN trainer and BLAS), so that the "
                    "trials at once never want more cores than the machine has.",
                ),
            )
            if estimate.n_todo < len(sweep.trials):
                st.caption(
                    f"{len(sweep.trials) - estimate.n_todo} trial(s) of this grid are "
                    "already done and will be skipped."
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
