"""Inspect: inside a model, for one image: filters, every layer's output, saliency,
occlusion, a robustness probe and a gradient check. ``digits.explain`` computes
everything; this page only shows it."""

import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import ui
from digits import explain
from digits.errors import DigitsError

PIXEL_FIGURE = 260  # height of a 28x28 heat map, in CSS pixels
PROBE_FIGURE = 200  # height of the probe's charts, beside its five sliders
TILE_COLUMNS = 16  # channels per row in the activation grids
SWEEP_SHIFTS = list(range(-8, 9))
MISSING = {
    "filters": "This model has no conv layers, so there are no filters to show.",
    "activations": "The scikit-learn MLP runs inside scikit-learn: its layer "
    "outputs are not reachable from digits. Pick a NumPy model (CNN or dense) to "
    "see them.",
    "saliency": "Saliency needs the network's own backward pass; the scikit-learn "
    "MLP does not expose one. Occlusion (right) works for any model.",
}
SIGNED = "RdBu_r"  # red positive, blue negative, white at zero


def heatmap(z: np.ndarray, *, signed: bool, height: int = PIXEL_FIGURE, **kw):
    """An image-like heat map: square pixels, row 0 at the top, no axes."""
    z = np.asarray(z, dtype=np.float64)
    if signed:
        top = float(np.nanmax(np.abs(z))) or 1.0
        colours = dict(colorscale=SIGNED, zmin=-top, zmax=top)
    else:
        colours = dict(colorscale="gray", zmin=0, zmax=max(1.0, float(np.nanmax(z))))
    fig = go.Figure(
        go.Heatmap(
            z=z,
            **colours,
            hovertemplate="row %{y}, col %{x}: %{z:.3g}<extra></extra>",
            colorbar=dict(thickness=10),
            **kw,
        )
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0))
    return fig


def chart(fig: go.Figure, caption: str, key: str) -> None:
    st.plotly_chart(fig, config={"displayModeBar": False}, key=key)
    st.caption(caption)


def choose_image(ds, run) -> tuple[np.ndarray, str] | None:
    """A test image (by index, or at random) or the Draw page's drawing."""
    source = st.segmented_control(
        "Input",
        ["Test image", "Drawing"],
        default="Test image",
        required=True,
        key="inspect-source",
        persist_state="session",
    )
    if source == "Drawing":
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
    left, right = st.columns([2, 1], vertical_alignment="bottom")
    right.button(
        "Random",
        icon=":material/shuffle:",
        key="inspect-random",
        on_click=lambda: st.session_state.update(
            {"inspect-index": int(np.random.default_rng().integers(n))}
        ),
    )
    i = left.number_input(
        f"Test image (0 to {n - 1:,})", 0, n - 1, 0, key="inspect-index"
    )
    label = ds.class_names[int(ds.y_test[i])]
    return ds.x_test[i].astype(np.float32) / 255, f"test image {i} (a {label})"


def probe_partners(run, runs) -> list[str]:
    """The inspected model plus one of the other family (the MLP for a NumPy
    model, else the CNN), the shipped one first."""
    other = "mlp" if run.kind != "mlp" else "cnn"
    partners = sorted(
        (r for r in runs if r.kind == other),
        key=lambda r: not r.name.startswith("default"),
    )
    return [run.name] + [r.name for r in partners[:1]]


def probability_figure(result: explain.Probe, names) -> go.Figure:
    fig = go.Figure(
        [
            go.Bar(name=name, x=list(names), y=p, hovertemplate="%{x}: %{y:.1%}")
            for name, p in result.probabilities.items()
        ]
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_layout(
        height=PROBE_FIGURE,
        margin=dict(l=10, r=10, t=30, b=10),
        barmode="group",
        legend=dict(orientation="h", y=1.02, yanchor="bottom"),
    )
    return fig


def sweep_figure(curves: dict, target_name: str, now: int) -> go.Figure:
    fig = go.Figure(
        [
            go.Scatter(x=SWEEP_SHIFTS, y=p, name=name, mode="lines+markers")
            for name, p in curves.items()
        ]
    )
    fig.add_vline(x=now, line=dict(color="#9aa5b1", dash="dot"))  # the slider
    fig.update_xaxes(title="shift right (px)", dtick=2)
    fig.update_yaxes(title=f"P({target_name})", range=[0, 1.02], tickformat=".0%")
    fig.update_layout(
        height=PROBE_FIGURE,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=1.02, yanchor="bottom"),
    )
    return fig


@st.fragment  # moving a slider reruns only this section
def probe_section(image: np.ndarray, run, runs, target: int, names) -> None:
    """Sliders that move the digit, and the probabilities of the chosen models."""
    by_name = {r.name: r for r in runs}
    chosen = st.multiselect(
        "Models to compare",
        list(by_name),
        default=probe_partners(run, runs),
        format_func=lambda n: ui.run_label(by_name[n]),
        key="inspect-probe-models",
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
    models = {n: ui.load_model(by_name[n]) for n in chosen}
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
            chart(
                heatmap(
                    result.transformed.image,
                    signed=False,
                    showscale=False,
                    height=PROBE_FIGURE,
                ),
                "The moved digit: `explain.transform`.",
                key="probe-image",
            )
            for note in result.transformed.notes:
                st.caption(note)
        with bars:
            chart(
                probability_figure(result, names),
                f"Class probabilities of each model on it: `explain.probe` "
                f"({1e3 * elapsed:.0f} ms).",
                key="probe-bars",
            )
        chart(
            sweep_figure(curves, names[target], dx),
            f"P({names[target]}) for every shift to the right, the other sliders as "
            "set: `explain.sweep`. A flat curve means the model tolerates shifts "
            "(where the digit has no more room, the shift stops).",
            key="probe-sweep",
        )


def activation_figure(out: explain.LayerOutput, names) -> go.Figure:
    """A grid of maps (conv, pool, activations after them) or bars (vectors)."""
    values = out.values
    if values.ndim == 3:
        maps = values.transpose(2, 0, 1)  # (channels, h, w)
        grid = explain.tile(maps, TILE_COLUMNS)
        rows = grid.shape[0] / grid.shape[1]
        height = int(np.clip(700 * rows, 120, 700))
        return heatmap(grid, signed=bool(values.min() < 0), height=height)
    x = list(names) if len(values) == len(names) else list(range(len(values)))
    fig = go.Figure(go.Bar(x=x, y=values, hovertemplate="%{x}: %{y:.3g}"))
    fig.update_xaxes(type="category" if len(values) == len(names) else "linear")
    fig.update_layout(height=200, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def filters_section(model) -> None:
    for name, w in explain.conv_filters(model).items():
        c_out, c_in, k, _ = w.shape
        if c_in == 1:
            grid = explain.tile(w[:, 0], TILE_COLUMNS)
            how = f"{c_out} kernels of {k}x{k}"
        else:
            # One row per input channel, one column per output channel.
            grid = explain.tile(w.transpose(1, 0, 2, 3).reshape(-1, k, k), c_out)
            how = f"{c_out} filters (columns) of {c_in} kernels (rows), {k}x{k} each"
        height = int(np.clip(900 * grid.shape[0] / grid.shape[1], 120, 600))
        chart(
            heatmap(grid, signed=True, height=height),
            f"**{name}**: {how}; red weights excite, blue inhibit: "
            "`explain.conv_filters`.",
            key=f"filters-{name}",
        )


@st.fragment
def gradient_check_section(model) -> None:
    st.caption(
        "Backprop against finite differences on a small float64 copy of this "
        "architecture (same layers, at most 3 channels and 8 units each): "
        "`explain.gradient_check`. Errors below 1e-5 pass."
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
    "moves. Each view names the `digits.explain` function that computes it.",
)
ds = ui.active_dataset()
runs = ui.runs_for(ds)
if not runs:
    st.info("No model is saved for this dataset yet. Train one on the Train page.")
    st.stop()
by_name = {run.name: run for run in runs}
top = st.columns([2, 3], gap="large")
with top[0]:
    name = st.selectbox(
        "Model",
        list(by_name),
        format_func=lambda n: ui.run_label(by_name[n]),
        key="inspect-model",
        persist_state="session",
    )
    run = by_name[name]
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
    chart(
        heatmap(image, signed=False, showscale=False),
        f"The input: {what}.",
        key="input",
    )
with cols[1]:
    if grads is None:
        st.info(MISSING["saliency"])
    else:
        chart(
            heatmap(grads.gradient, signed=True),
            f"Saliency: d(logit of {run.class_names[grads.target]}) / d(pixel), by "
            "our backprop; red pixels raise it: `explain.saliency`.",
            key="saliency",
        )
with cols[2]:
    chart(
        heatmap(hidden.drop, signed=True),
        f"Occlusion: how much the log-odds of {run.class_names[hidden.target]} "
        f"fall when a {hidden.patch}x{hidden.patch} patch hides each pixel: "
        "`explain.occlusion`.",
        key="occlusion",
    )

st.subheader("Robustness probe")
st.caption(
    "Move the digit and watch the class probabilities: MNIST digits are centred "
    "by mass, which a dense network relies on; a CNN's pooling tolerates shifts."
)
probe_section(image, run, runs, target, run.class_names)

st.subheader("Layer by layer")
if not outputs:
    st.info(MISSING["activations"])
else:
    tabs = st.tabs([f"{o.name} {'x'.join(map(str, o.shape))}" for o in outputs])
    for tab, out in zip(tabs, outputs, strict=True):
        with tab:
            chart(
                activation_figure(out, run.class_names),
                f"{out.kind} output {out.shape} for this image"
                + (", one map per channel" if out.values.ndim == 3 else "")
                + ": `explain.activations`.",
                key=f"act-{out.name}",
            )

st.subheader("Learned filters")
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
