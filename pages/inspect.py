"""Inspect: inside a model, for one image: filters, every layer's output, saliency,
occlusion, a robustness probe and a gradient check. ``digits.explain`` computes
everything; this page only shows it."""

import time

import numpy as np
import streamlit as st

import ui
from digits import explain, figures, store
from digits.errors import DigitsError

TILE_COLUMNS = 16  # channels per row in the activation grids
SWEEP_SHIFTS = list(range(-8, 9))
TEST_IMAGE = "Test image"
STRONGEST = 8  # filters of a later conv layer shown at first, the strongest
# Kernels to a row: at 1024x768 (sidebar open) a first layer's show about 75 px
# wide, the strongest few about 110 px, all of a later layer's about 50 px.
KERNEL_COLUMNS = {"first": 6, "strongest": 4, "all": 8}
PROBE_MODELS_KEY = "inspect-probe-models"  # plus the inspected model's name
PIXEL = "inspect"  # the keys of the pixel worked out (ui.conv_pixel_section)
MISSING = {
    "filters": "This model has no conv layers, so there are no filters to show.",
    "activations": "The scikit-learn MLP runs inside scikit-learn, and its layer "
    "outputs are not reachable from here. Pick a NumPy model (CNN or dense) to "
    "see them.",
    "saliency": "Saliency needs the network's own backward pass (backpropagation), "
    "which the scikit-learn MLP does not expose. Occlusion (right) works for any "
    "model.",
}


def choose_image(ds, run) -> tuple[np.ndarray, str] | None:
    """A test image (by index, or at random) or the Draw page's drawing."""
    # No default: Draw's "Inspect this digit" sets the choice before this page
    # opens, and a widget takes a default or a value set in the session, not both.
    st.session_state.setdefault(ui.INSPECT_SOURCE_KEY, TEST_IMAGE)
    source = st.segmented_control(
        "Input",
        [TEST_IMAGE, ui.INSPECT_DRAWING],
        required=True,
        key=ui.INSPECT_SOURCE_KEY,
        persist_state="session",
    )
    if source == ui.INSPECT_DRAWING:
        drawing = st.session_state.get(ui.DRAWING_KEY)
        if drawing is None:
            st.info("Nothing drawn yet: draw a digit on the Draw page first.")
            st.page_link("pages/draw.py", label="Draw a digit", icon=":material/draw:")
            return None
        if drawing.shape != run.image_shape:
            h, w = run.image_shape
            st.info(
                f"The drawing is {drawing.shape[0]}x{drawing.shape[1]}, and this "
                f"model takes {h}x{w} images: pick a model for 28x28 digits."
            )
            return None
        return drawing, "your drawing"
    n = len(ds.x_test)
    # One row while both fit whole: the button takes its label's width (a third
    # of the column cut it to "R..." at 1024 px wide), the number the rest.
    with st.container(horizontal=True, vertical_alignment="bottom"):
        left, right = st.container(), st.container(width="content")
    right.button(
        "Random",
        icon=":material/shuffle:",
        key="inspect-random",
        on_click=lambda: st.session_state.update(
            {"inspect-index": int(np.random.default_rng().integers(n))}
        ),
    )
    i = left.number_input(
        f"Test image (0 to {n - 1:,})",
        0,
        n - 1,
        0,
        key="inspect-index",
        help=f"One of the {n:,} test images, by its number.",
    )
    label = ds.class_names[int(ds.y_test[i])]
    return ds.x_test[i].astype(np.float32) / 255, f"test image {i} (a {label})"


def probe_partners(run, runs) -> list[str]:
    """The inspected model plus one of the other family (the MLP for a NumPy
    model, else the CNN), the shipped one first."""
    other = "mlp" if run.kind != "mlp" else "cnn"
    partner = store.preferred(runs, other)
    return [run.name] + ([partner.name] if partner is not None else [])


@st.fragment  # moving a slider reruns only this section
def probe_section(image: np.ndarray, run, runs, target: int, names) -> None:
    """Sliders that move the digit, and the probabilities of the chosen models."""
    # One picker per inspected model: a picker keeps its choice while its key
    # stays the same, whatever its default, so with one key for all models the
    # probe went on comparing the models picked for the previous one.
    chosen = ui.pick_runs(
        "Models to compare",
        runs,
        probe_partners(run, runs),
        f"{PROBE_MODELS_KEY}-{run.name}",
    )
    sliders, shown = st.columns([1, 2], gap="large")
    with sliders:
        dx = st.slider("Shift right (px)", -10, 10, 0, key="probe-dx")
        dy = st.slider("Shift down (px)", -10, 10, 0, key="probe-dy")
        rotate = st.slider(
            "Rotate (degrees, anticlockwise)", -60, 60, 0, 5, key="probe-rotate"
        )
        scale = st.slider("Scale", 0.5, 1.5, 1.0, 0.05, key="probe-scale")
        thicken = st.slider("Thicken (px)", 0, 3, 0, key="probe-thicken")
    if not chosen:
        shown.info("Choose at least one model to compare.")
        return
    models = {r.name: ui.load_model(r) for r in chosen}
    try:
        start = time.perf_counter()
        settings = dict(shift=(dx, dy), rotate=rotate, scale=scale, thicken=thicken)
        result = explain.probe(models, image, **settings)
        elapsed = time.perf_counter() - start
        curves = explain.sweep(
            models, image, "shift_x", SWEEP_SHIFTS, target, **settings
        )
    except DigitsError as err:
        shown.error(str(err), icon=":material/error:")
        return
    with shown:
        picture, bars = st.columns([1, 2])
        with picture:
            ui.chart(
                figures.heatmap(
                    result.transformed.image,
                    signed=False,
                    showscale=False,
                    height=figures.PROBE_FIGURE,
                ),
                "The digit, moved as the sliders say.",
                key="probe-image",
            )
            for note in result.transformed.notes:
                st.caption(note)
        with bars:
            ui.chart(
                figures.probe_bars(result.probabilities, names),
                f"How sure each model is of each digit, for the moved digit "
                f"({1e3 * elapsed:.0f} ms).",
                key="probe-bars",
            )
        ui.chart(
            figures.shift_sweep(curves, SWEEP_SHIFTS, names[target], dx),
            f"How sure each model is that this is a {names[target]}, for every "
            "shift to the right (the other sliders as set). A flat curve means the "
            "model copes with shifts; where the digit has no more room, the shift "
            "stops.",
            key="probe-sweep",
        )
    ui.how_computed(
        "digits.explain.transform",
        "digits.explain.probe",
        "digits.explain.sweep",
        note="transform moves the digit, probe asks each model for its class "
        "probabilities, and sweep repeats that for every shift.",
    )


@st.fragment  # the filters' own choices rerun only this section
def filters_section(model) -> None:
    """Each conv layer's filters, large and strongest first: all of a first
    layer's; of a later layer, the strongest few (or all), one kernel each."""
    for name, w in explain.conv_filters(model).items():
        c_out, c_in, k, _ = w.shape
        st.markdown(f"**{name}**")
        if c_in == 1:
            view = explain.strongest_kernels(w)
            fig = figures.conv_kernels(
                view.kernels, view.filters, columns=KERNEL_COLUMNS["first"]
            )
            what = (
                f"Its {c_out} filters, each a {k}x{k} pattern it looks "
                "for in the image, strongest first (largest weights)."
            )
        else:
            show_all, channel = kernel_choice(name, c_out, c_in)
            view = explain.strongest_kernels(
                w, top=None if show_all else STRONGEST, channel=channel
            )
            fig = figures.conv_kernels(
                view.kernels,
                view.filters,
                view.channels,
                KERNEL_COLUMNS["all" if show_all else "strongest"],
            )
            what = (
                f"Each of its {c_out} filters looks at all {c_in} maps "
                f"of the layer before, with one {k}x{k} pattern per map. Shown: "
                + ("every filter" if show_all else f"the {STRONGEST} strongest")
                + ", strongest first (largest weights), each on "
                + (
                    "the map it weighs most"
                    if channel is None
                    else f"map {channel} of the layer before"
                )
                + ' ("#17 in 3": filter 17, map 3).'
            )
        ui.chart(fig, what + " Red weights excite, blue inhibit.", key=f"f-{name}")
    ui.how_computed(
        "digits.explain.conv_filters",
        "digits.explain.strongest_kernels",
        note="conv_filters reads each conv layer's weights (filters x input maps x "
        "k x k); strongest_kernels orders the filters by the L2 norm of all their "
        "weights and picks one kernel of each.",
    )


def kernel_choice(name: str, c_out: int, c_in: int) -> tuple[bool, int | None]:
    """Whether to show every filter of layer ``name``, and which input map (None:
    each filter's strongest)."""
    left, right = st.columns(2, vertical_alignment="bottom")
    channel = right.selectbox(
        "Map of the layer before",
        [None, *range(c_in)],
        format_func=lambda c: "Each filter's strongest" if c is None else f"Map {c}",
        key=f"filters-{name}-channel",
    )
    show_all = left.toggle(f"Show all {c_out} filters", key=f"filters-{name}-all")
    return show_all, channel


@st.fragment
def gradient_check_section(model) -> None:
    st.caption(
        "Checks that the network's own learning rule (backpropagation) computes "
        "the right slopes: each is compared with the change measured by nudging "
        "one weight at a time, on a small copy of this network (same layers, at "
        "most 3 channels and 8 units each). Relative differences below 0.00001 "
        "pass."
    )
    ui.how_computed(
        "digits.explain.gradient_check",
        note="Backpropagation against central finite differences, in float64.",
    )
    if not st.button("Run the gradient check", icon=":material/calculate:"):
        return
    try:
        with st.spinner("Finite differences, one parameter at a time..."):
            start = time.perf_counter()
            rows = explain.gradient_check(model)
            elapsed = time.perf_counter() - start
    except DigitsError as err:
        ui.show_error(err)
        return
    st.dataframe(
        [
            {
                "Layer": r["layer"],
                "Type": r["type"],
                "Parameters checked": r["params"],
                "Relative error": f"{r['relative_error']:.1e}",
                "Passed": "yes" if r["passed"] else "NO",
            }
            for r in rows
        ],
        hide_index=True,
    )
    st.caption(f"Checked in {elapsed:.1f} s.")


ui.page_header(
    "Inspect",
    "Look inside a model for one digit: its learned filters, every layer's "
    "output, which pixels its answer depends on, and how it copes when the digit "
    "moves.",
)
ds = ui.active_dataset()
runs = ui.runs_for(ds)
if not runs:
    st.info("No model is saved for this dataset yet. Train one on the Train page.")
    st.stop()
top = st.columns(2, gap="large")
with top[0]:
    run = ui.pick_run("Model", runs, ui.INSPECT_MODEL_KEY)
    picked = choose_image(ds, run)
if picked is None:
    st.stop()
image, what = picked
try:
    model = ui.load_model(run)
    can = explain.capabilities(model)
    start = time.perf_counter()
    proba = ui.predict_one(model, image, len(run.class_names))
    grads = explain.saliency(model, image) if can["saliency"] else None
    outputs = explain.activations(model, image) if can["activations"] else []
    inspected = time.perf_counter()
    hidden = explain.occlusion(model, image)
    occluded = time.perf_counter()
except DigitsError as err:
    ui.show_error(err)
    st.stop()
target = int(proba.argmax())
with top[1]:
    st.metric(
        f"Prediction for {what}",
        run.class_names[target],
        help=ui.run_label(run),
    )
    st.caption(
        f"{proba[target]:.1%} sure. Server time: prediction"
        + (", saliency and activations" if can["saliency"] else "")
        + f" {1e3 * (inspected - start):.0f} ms, occlusion "
        f"{1e3 * (occluded - inspected):.0f} ms."
    )

st.subheader("What the answer depends on")
cols = st.columns(3)
with cols[0]:
    ui.chart(
        figures.heatmap(image, signed=False, showscale=False),
        f"The input: {what}.",
        key="input",
    )
with cols[1]:
    if grads is None:
        st.info(MISSING["saliency"])
    else:
        ui.chart(
            figures.heatmap(grads.gradient, signed=True),
            "Saliency: how much each pixel sways the answer. Red pixels, made "
            "brighter, would make the model surer of "
            f"{run.class_names[grads.target]}; blue ones, made darker.",
            key="saliency",
        )
with cols[2]:
    ui.chart(
        figures.heatmap(hidden.drop, signed=True),
        "Occlusion: hide part of the image and see what the answer loses. Here, "
        f"how much less sure of {run.class_names[hidden.target]} the model gets "
        f"when a {hidden.patch}x{hidden.patch} square hides each pixel (red: that "
        "pixel matters).",
        key="occlusion",
    )
ui.how_computed(
    "digits.explain.saliency",
    "digits.explain.occlusion",
    note="Saliency is the gradient of the class's score (logit) with respect to "
    "each pixel, by the network's own backprop. Occlusion is the fall in the "
    "class's log-odds when a patch is blanked.",
)

st.subheader("Robustness probe")
st.caption(
    "Move, turn, resize or thicken the digit and watch how sure each model stays: "
    "a robust model keeps its answer. MNIST's digits are all centred, which a "
    "dense network relies on; a CNN's pooling copes better with shifts."
)
probe_section(image, run, runs, target, run.class_names)

st.subheader("Layer by layer")
st.caption(
    "Activations: the numbers each layer passes on to the next for this image. "
    "Early layers light up at strokes and edges; the last gives a score per class."
)
if not outputs:
    st.info(MISSING["activations"])
else:
    tabs = st.tabs([f"{o.name} {'x'.join(map(str, o.shape))}" for o in outputs])
    for tab, out in zip(tabs, outputs, strict=True):
        numbers = f"{'x'.join(map(str, out.shape))} numbers"
        with tab:
            if out.values.ndim == 3 and can["filters"]:  # maps: click one
                ui.chart(
                    figures.layer_strip(out.values, run.class_names),
                    f"What this layer passes on for {what}: {numbers}, one map per "
                    "channel (filter). Click a map to enlarge it below.",
                    **ui.strip_clicks(PIXEL, run.name, out.name, f"act-{out.name}"),
                )
            else:
                ui.chart(
                    figures.layer_output(out.values, run.class_names, TILE_COLUMNS),
                    f"What this layer passes on for {what}: {numbers}.",
                    key=f"act-{out.name}",
                )
    ui.how_computed(
        "digits.explain.activations",
        note="Runs the network layer by layer in inference mode (no dropout) and "
        "keeps each layer's output.",
    )
    if can["filters"]:
        st.markdown("**What one pixel computes**")
        st.caption(
            "One map of a layer, enlarged (click a map above, or pick it here). "
            "Click one of its pixels to see the window of the input it read, the "
            "filter's weights, their products and sum, the bias and the ReLU, with "
            f"the numbers of this model and {what}."
        )
        ui.conv_pixel_section(PIXEL, run, model, image, outputs, what)

st.subheader("Learned filters")
st.caption(
    "Filters: the small patterns a conv layer has learned to look for. Each slides "
    "over its input and lights up where its pattern appears."
)
if can["filters"]:
    filters_section(model)
else:
    st.info(MISSING["filters"])

st.subheader("Gradient check")
if can["saliency"]:
    gradient_check_section(model)
else:
    st.info(
        "The gradient check tests our own backprop; the scikit-learn MLP uses "
        "scikit-learn's."
    )
