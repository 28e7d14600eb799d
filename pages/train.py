"""Train: choose a model and its hyperparameters, train it in the background, watch.

The settings are kept in the URL, and the job under the browser tab's client id
(``ui.tab_job``), so a reload shows the same settings and the running job.
"""

import numpy as np
import streamlit as st

import ui
from digits import calibrate, explain, figures, humanize, registry, training
from digits.errors import DigitsError
from digits.training_job import TrainingJob

REFRESH_SECONDS = 1.0  # how often the live view redraws while a job runs (each
# redraw of the curves and health charts costs the server ~60-100 ms)
# What the page starts with: the demo preset (digits.registry) on all the training
# images, where its 5x5 network fits (not the 8x8 digits); else, and for the other
# kinds, quick.
FIRST_PRESETS = ("demo", "quick")
# ...but 5 epochs of it, not the preset's 2 (about 10 s, over before the views
# inside the network have much to show): about 25 s on a quiet 2-core machine,
# long enough to watch, and 99.3% on the MNIST test set (issue 19, item 6).
PAGE_SETTINGS = {("cnn", "demo"): {"max_iter": 5}}
DEFAULT_TRAIN_SIZE = 60_000  # all of them: no dataset offers as many once its
# validation images are held out (ui.train_size_input then starts at all)
GROUPS = {
    "Architecture": (
        "conv_channels",
        "kernel_size",
        "padding",
        "hidden_layer_sizes",
        "activation",
        "dropout",
    ),
    "Optimizer": (
        "solver",
        "learning_rate_init",
        "learning_rate",
        "momentum",
        "alpha",
        "batch_size",
    ),
    # ...and everything not named above.
    "Training": ("max_iter", "augment", "early_stopping", "n_iter_no_change"),
}
LIVE_VIEW_SECONDS = 2.0  # how often the views inside the network redraw
FILTER_COLUMNS = 8  # first-layer filters to a row in the live view
PROBE_VALIDATION, PROBE_DRAWING = "A validation image", "Your last drawing"
ANNOUNCED_KEY = "train-announced"  # the job whose result was last announced
START_ERROR_KEY = "train-start-error"  # why the last Start was refused
STATUS_TEXT = {
    "stopping": " · stopping after this batch...",
    "pausing": " · pausing after this batch...",
    "paused": " · paused",
    "saving": " · scoring the test set and saving the model...",
}


def hyperparameters(spec: registry.ModelKind, preset: str | None) -> dict:
    """One widget per hyperparameter of ``spec``, in groups; returns their values."""
    defaults = {
        **spec.build().get_params(),
        **spec.params(preset),
        **PAGE_SETTINGS.get((spec.name, preset), {}),
    }
    listed = {name for names in GROUPS.values() for name in names}
    params = {}
    for group, names in GROUPS.items():
        hps = [hp for hp in spec.hyperparameters if hp.name in names]
        if group == "Training":
            hps += [hp for hp in spec.hyperparameters if hp.name not in listed]
        with st.expander(group, expanded=group != "Training"):
            # Two inputs a row, side by side where they fit (ui.INPUTS stacks
            # them in a narrow column), in reading order either way.
            for pair in (hps[i : i + 2] for i in range(0, len(hps), 2)):
                for col, hp in zip(st.columns(2), pair, strict=False):
                    key = f"train-{spec.name}-{preset}-{hp.name}"
                    with col:
                        params[hp.name] = ui.hyperparameter_input(
                            hp, defaults[hp.name], key
                        )
    return params


def estimate(spec, params: dict, ds, n_train: int) -> bool:
    """Parameter count and time per epoch, measured here; False if params are bad."""
    shape, k = ds.x_train.shape[1:], len(ds.class_names)
    n_val = training.validation_images(ds)
    try:
        with st.spinner("Timing a few batches of this network on this machine..."):
            n_params = calibrate.count_params(spec.name, params, shape, k)
            seconds = calibrate.estimate_epoch_seconds(
                spec.name,
                params,
                n_train,
                n_validation=n_val,
                image_shape=shape,
                n_classes=k,
            )
    except DigitsError as err:
        ui.show_error(err)
        return False
    epochs = int(params.get("max_iter", 1))
    ui.metric_row(
        (
            "Parameters",
            f"{n_params:,}",
            "How many numbers (weights and biases) the model learns.",
        ),
        (
            "Time per epoch",
            f"≈ {humanize.duration(seconds)}",
            "Measured on this machine by timing a few batches of this network.",
        ),
        ("All epochs", f"≈ {humanize.duration(seconds * epochs)}"),
    )
    return True


def announce(job: TrainingJob, snap) -> None:
    """The outcome of a finished job: the saved run, or the error."""
    if snap.status == "failed":
        st.error(snap.error, icon=":material/error:")
        return
    run = snap.run
    if run is None:
        st.info("Stopped while waiting for a training slot: nothing was trained.")
        return
    epochs = len(run.meta["history"])
    stopped = " after you pressed Stop" if snap.status == "stopped" else ""
    st.success(
        f"Saved as **{run.name}**{stopped}: test accuracy "
        f"**{run.test_accuracy:.2%}** after {humanize.plural(epochs, 'epoch')}.",
        icon=":material/check_circle:",
    )
    if snap.stop_latency is not None:
        st.caption(
            f"Training stopped {snap.stop_latency:.2f} s after Stop was pressed."
        )
    st.page_link("pages/evaluate.py", label="Evaluate it", icon=":material/analytics:")
    if st.session_state.get(ANNOUNCED_KEY) is not job:
        # Make the new run the one the other pages show first.
        st.session_state[ANNOUNCED_KEY] = job
        st.session_state["evaluate-model"] = run.name


def live(job: TrainingJob, refreshing: bool) -> None:
    """Progress, speed, ETA, curves and the Stop button of ``job``."""
    snap = job.snapshot()
    if refreshing and snap.finished:
        st.rerun()  # once more as a whole page: stops the timer, enables Start
    text = (
        f"{job.spec.label} · epoch {snap.epoch} of {snap.max_epochs} · "
        f"{snap.images_per_second:,.0f} images/s · "
        f"{humanize.duration(snap.elapsed)} so far"
    )
    held = "paused" if snap.paused else "pausing" if snap.pausing else snap.status
    text += STATUS_TEXT.get(held, "")
    st.progress(snap.fraction, text=text)
    ui.queue_notice(snap, "model(s)", "one")
    last = snap.epochs[-1] if snap.epochs else {}
    # The metrics, then Stop, wrap onto a second line rather than be cut where
    # the column is narrow (1024 px wide, presenter mode).
    row = ui.metric_row(
        (
            "Per epoch",
            f"≈ {humanize.duration(snap.epoch_seconds)}",
            "Measured from this run's batches so far."
            if snap.epoch_measured
            else "Estimated before training; measured once a few batches have run.",
        ),
        ("Time left", "done" if snap.finished else humanize.duration(snap.eta)),
        (
            "Validation",
            f"{last['val_accuracy']:.1%}" if "val_accuracy" in last else "-",
            "Accuracy after the last finished epoch on the validation images: "
            "training images held out, never learned from.",
        ),
    )
    row.button(
        "Stop",
        key="stop",
        icon=":material/stop_circle:",
        on_click=job.stop,
        disabled=snap.status not in ("queued", "running"),
        help="Stops after the current batch; the model trained so far is saved.",
    )
    if snap.points:  # nothing to plot while queued: spare the server the figure
        ui.chart(
            figures.mark_changes(figures.training_curves(snap), snap.changes),
            "Loss (how wrong the model's probabilities are: lower is better) and "
            "accuracy as the model learns. Blue: the training images it learns "
            "from. Orange, after each epoch: the validation images, training "
            "images held out from learning to check it. If orange falls behind "
            "while blue keeps improving, the model memorises. A dashed line marks "
            "a setting you changed while it trained.",
        )
    if snap.health:
        ui.chart(
            figures.training_health(snap),
            f"Training health per layer, measured on one training batch in "
            f"{explain.HEALTH_EVERY}: how strongly the loss pulls on the layer's "
            "weights (gradient size), how big each update is next to the weights "
            "(about 0.001 is healthy), and the share of ReLU units that stay at 0 "
            "for a whole batch (silent units learn nothing).",
        )
        ui.how_computed("digits.explain.TrainingHealth")
    if snap.finished:
        announce(job, snap)


def steer(job: TrainingJob) -> None:
    """Pause or Resume, and the learning rate (and SGD's momentum) to use from
    the next batch on. Outside the live view's timer, so that a number being
    typed is not redrawn under the cursor."""
    snap = job.snapshot()
    working = snap.status == "running"
    # Pause on a row of its own, its words beside it rather than in a tooltip: a
    # tooltip opened by the click covered the learning rate's label.
    with st.container(horizontal=True, vertical_alignment="center"):
        if snap.paused or snap.pausing:
            label, icon, action = "Resume", ":material/play_arrow:", job.resume
        else:
            label, icon, action = "Pause", ":material/pause:", job.pause
        st.button(
            label,
            key=label.lower(),  # "pause" or "resume"
            icon=icon,
            on_click=action,
            disabled=not working,
        )
        st.caption(
            "Pause holds training after the current batch; Resume carries on "
            "exactly as if it had never paused."
        )
    with st.container(horizontal=True, vertical_alignment="bottom"):
        lr = st.number_input(
            "Learning rate",
            min_value=1e-6,
            max_value=10.0,
            value=float(job.params.get("learning_rate_init", 1e-3)),
            format="%.5f",
            step=1e-4,
            key="steer-lr",
            help="How big a step each batch takes. The new rate is used from "
            "the next batch to the end of training: it replaces the schedule.",
        )
        momentum = None
        if job.params.get("solver") == "sgd":
            momentum = st.number_input(
                "Momentum",
                min_value=0.0,
                max_value=0.99,
                value=float(job.params.get("momentum", 0.9)),
                key="steer-momentum",
                help="How much of the previous steps each new step keeps.",
            )
        if st.button("Apply", key="steer-apply", disabled=not working):
            job.set_learning_rate(lr)
            if momentum is not None:
                job.set_momentum(momentum)
            st.toast("Applied from the next batch.")
    ui.how_computed("digits.nn.callbacks.Steering")


def live_views(job: TrainingJob) -> None:
    """Inside the network as it trains: the first layer's filters, the probe
    digit through every layer with its probabilities, the images still wrong."""
    view = job.snapshot().live
    if view is None:
        st.caption(
            "The views inside the network appear a few seconds after training starts."
        )
        return
    names = job.dataset.class_names
    st.markdown(f"**Inside the network** · after {view.at:.2f} epochs")
    if view.filters is not None:
        st.image(
            figures.kernels_image(view.filters, FILTER_COLUMNS),
            caption="The first layer's filters: the small patterns it looks for "
            "in the image. Red weights respond to ink, blue to its absence. They "
            "start as noise and take shape as it learns.",
        )
    left, right = st.columns([1, 2])
    probe = np.asarray(view.probe, dtype=np.float64)
    left.image(
        figures.enlarge((probe / max(probe.max(), 1e-9) * 255).astype(np.uint8)),
        caption=f"Followed: {view.probe_source}",
        # No fixed width: 140 px overflowed its column at 1024 px wide (about
        # 100 px), under the chart beside it, cutting the caption.
    )
    with right:
        ui.chart(
            figures.probability_bars(view.probabilities, names),
            f"What the model says {view.probe_source} is, now.",
        )
    for layer in view.layers:
        st.image(
            figures.activation_image(layer.values),
            caption=f"{layer.name}: what it passes on for {view.probe_source} "
            "(white: strong, black: nothing)",
        )
    if view.mistakes is not None and len(view.mistakes):
        st.markdown(f"**Still wrong after epoch {view.mistakes_epoch}**")
        st.image(
            [figures.enlarge(m, 56) for m in view.mistakes],
            caption=[
                f"{names[g]} (is {names[t]})"
                for g, t in zip(view.guesses, view.truths, strict=True)
            ],
        )
        st.caption(
            "Validation images (held out from training) the model gets "
            "wrong: its guess, and the true digit."
        )
    ui.how_computed("digits.training_job.LiveView")


def start(kind: str, ds, params: dict, n_train: int, probe=None) -> None:
    """Start a job with the settings of this very run of the page.

    Not an ``on_click`` callback: a callback's arguments are those of the last run
    that drew the button, so a slider moved just before the click (its own run
    cut short by the click) would be ignored. The page reruns after this, to show
    the job as running (Start disabled, live view on).
    """
    current = ui.tab_job(ui.JOB_KEY)
    if current is not None and not current.snapshot().finished:
        return  # one job per browser tab at a time
    try:
        ui.keep_job(
            ui.JOB_KEY,
            TrainingJob(kind, ds, params, train_size=n_train, probe=probe).start(),
        )
    except DigitsError as err:
        st.session_state[START_ERROR_KEY] = str(err)


ui.page_header(
    "Train",
    "Pick a model and its hyperparameters (the settings fixed before training), "
    "then train it in the background: the curves update live, and you may switch "
    "pages meanwhile.",
)
ds = ui.active_dataset()
job: TrainingJob | None = ui.tab_job(ui.JOB_KEY)  # this tab's, even after a reload
running = job is not None and not job.snapshot().finished

controls, view = st.columns([1, 1.4], gap="large")
with controls:
    kind = st.selectbox(
        "Model",
        list(registry.MODELS),
        format_func=lambda name: registry.MODELS[name].label,
        key="train-kind",
        persist_state="session",
        **ui.URL_BOUND,
    )
    spec = registry.get(kind)
    st.caption(spec.description)
    left, right = st.columns(2)
    preset = left.selectbox(
        "Start from preset",
        # Only presets whose network fits these images (the 5x5 default CNN does
        # not fit the 8x8 digits the app falls back to offline).
        presets := spec.presets_for(ds.x_train.shape[1:], len(ds.class_names)),
        index=next((presets.index(p) for p in FIRST_PRESETS if p in presets), 0),
        key=f"train-preset-{kind}",
        persist_state="session",
        **ui.URL_BOUND,
    )
    with right:
        n_train = ui.train_size_input(ds, DEFAULT_TRAIN_SIZE, "train-size")
    with st.container(key=ui.INPUTS):
        params = hyperparameters(spec, preset)

with view:
    ok = estimate(spec, params, ds, n_train)
    follow = st.radio(
        "Digit to follow through the network",
        [PROBE_VALIDATION, PROBE_DRAWING],
        horizontal=True,
        key="train-follow",
        help="While it trains, the page shows this digit passing through every "
        "layer. Your last drawing comes from the Draw page.",
    )
    if st.button(
        "Start training",
        key="start",
        type="primary",
        icon=":material/play_arrow:",
        disabled=running or not ok,
        help="A run is already in progress." if running else None,
    ):
        drawing = st.session_state.get(ui.DRAWING_KEY)
        start(kind, ds, params, n_train, drawing if follow == PROBE_DRAWING else None)
        st.rerun()
    if START_ERROR_KEY in st.session_state:
        st.error(st.session_state.pop(START_ERROR_KEY), icon=":material/error:")
    st.subheader("Progress")
    if job is None:
        st.info(
            "Set the hyperparameters and press **Start training**: the loss and "
            "accuracy curves appear here as the model learns."
        )
    else:
        st.fragment(run_every=REFRESH_SECONDS if running else None)(live)(job, running)
        if job.steerable and running:
            steer(job)
        if job.steerable:
            refresh = LIVE_VIEW_SECONDS if running else None
            st.fragment(run_every=refresh)(live_views)(job)
