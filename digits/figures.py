"""The dashboard's charts and images, as shown: Plotly figures drawn from what the
rest of ``digits`` computes, and images enlarged, squared or framed for display.

Each figure function takes arrays, dicts or a job's progress snapshot and
returns a ``plotly.graph_objects.Figure``; a page only places it
(``st.plotly_chart``). Nothing here computes a result of its own (a score, a
front, the maps of a layer): ``metrics``, ``explain`` and ``experiments`` do,
and this module only draws it. Like the rest of ``digits``, it never imports
streamlit, so every figure can be built and checked without a server (or shown
in a notebook).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# Imported before Plotly Express: px.imshow looks pandas up lazily, and two
# sessions drawing at once on a cold server could find it half-imported
# ("partially initialized module 'pandas' has no attribute 'Series'").
import pandas  # noqa: F401
import plotly.express as px
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import get_colorscale, qualitative, unlabel_rgb
from plotly.subplots import make_subplots

BLUE, ORANGE, RED, GREY = "#1f77b4", "#ff7f0e", "#ff4b4b", "#9aa5b1"
COLORS = qualitative.Plotly  # one per line, in order, for sweeps' charts
SIGNED = "RdBu_r"  # red positive, blue negative, white at zero
PIXEL_FIGURE = 260  # height of a 28x28 heat map, in CSS pixels
TIGHT = dict(l=10, r=10, t=10, b=10)  # margins of a chart without a title


# -- images, as shown -----------------------------------------------------------------

GALLERY_PIXELS = 112  # side of a gallery image, before the browser fits it


def tile(maps: np.ndarray, n_cols: int, pad: int = 1) -> np.ndarray:
    """Maps (n, h, w) tiled in rows of ``n_cols``, NaN between them (shown blank).

    Returns (rows * (h + pad) - pad, n_cols * (w + pad) - pad), float.
    """
    maps = np.asarray(maps, dtype=np.float64)
    n, h, w = maps.shape
    n_cols = max(1, min(n_cols, n))
    n_rows = math.ceil(n / n_cols)
    out = np.full((n_rows * (h + pad) - pad, n_cols * (w + pad) - pad), np.nan)
    for i, m in enumerate(maps):
        r, c = divmod(i, n_cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = m
    return out


def enlarge(image: np.ndarray, pixels: int = GALLERY_PIXELS) -> np.ndarray:
    """``image`` (h, w) scaled up by a whole factor to about ``pixels`` wide, with
    sharp pixels (browsers blur small images they scale themselves)."""
    factor = max(1, round(pixels / max(image.shape[:2])))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def thumbnail(image: np.ndarray, pixels: int) -> np.ndarray:
    """``image`` (h, w) padded with black to a square and resized to ``pixels``,
    so that steps of any shape (a thin "1" is tall and narrow) show alike."""
    h, w = image.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = image
    resample = Image.Resampling.NEAREST if side < pixels else Image.Resampling.BOX
    return np.asarray(Image.fromarray(square).resize((pixels, pixels), resample))


MISREAD_RGB = (255, 75, 75)  # the frame of a misread drawing, Streamlit's red


def framed(images: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """Grey images (n, h, w) as RGB (n, h, w, 3), a one-pixel red frame around
    those where ``marked`` (n,) is True (a gallery's misreads)."""
    rgb = np.repeat(np.asarray(images, dtype=np.uint8)[..., None], 3, axis=-1)
    edge = np.zeros(rgb.shape[1:3], dtype=bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    rgb[np.asarray(marked, dtype=bool)[:, None, None] & edge] = MISREAD_RGB
    return rgb


# -- Home ---------------------------------------------------------------------------

SAMPLE_PAD = 2  # pixels between the samples of the grid
SAMPLE_BACKGROUND = 96  # grey between the samples, and where a class runs short
MIN_SAMPLE = 24  # smallest side, in pixels, of a sample in the grid


def class_samples(
    x: np.ndarray, y: np.ndarray, class_names: Sequence[str], per_class: int, seed: int
) -> go.Figure:
    """Random images of ``x`` (n, h, w) uint8, one row of ``per_class`` for each
    class of ``y`` (n,), labelled with its name; black where a class has fewer."""
    rng = np.random.default_rng(seed)
    h, w = x.shape[1:]
    rows = []
    for c in range(len(class_names)):
        idx = np.flatnonzero(y == c)
        pick = rng.choice(idx, min(per_class, len(idx)), replace=False)
        row = np.zeros((per_class, h, w), np.uint8)
        row[: len(pick)] = x[np.sort(pick)]
        rows.append(row)
    images = np.concatenate(rows)
    # Small images (the 8x8 sklearn digits) are enlarged, so the borders stay thin.
    factor = max(1, round(MIN_SAMPLE / max(h, w)))
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    h = images.shape[1]
    grid = tile(images, per_class, SAMPLE_PAD)
    image = np.nan_to_num(grid, nan=SAMPLE_BACKGROUND).astype(np.uint8)
    fig = px.imshow(image, binary_string=True, zmin=0, zmax=255)  # as stored
    centres = [r * (h + SAMPLE_PAD) + h / 2 for r in range(len(class_names))]
    fig.update_yaxes(tickvals=centres, ticktext=list(class_names), title=None)
    fig.update_xaxes(visible=False)
    fig.update_layout(
        margin=dict(l=0, r=0, t=0, b=0), height=12 + 36 * len(class_names)
    )
    return fig


# -- Train --------------------------------------------------------------------------


def training_curves(snap) -> go.Figure:
    """Loss and accuracy of a training job's snapshot (``TrainingJob.snapshot``):
    training (running mean within each epoch) and validation, by epoch."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    validated = [e for e in snap.epochs if "val_loss" in e]
    for col, (index, name) in enumerate(((1, "loss"), (2, "accuracy")), start=1):
        fig.add_scatter(
            x=[p[0] for p in snap.points],
            y=[p[index] for p in snap.points],
            name="training",
            legendgroup="training",
            showlegend=col == 1,
            mode="lines",
            line=dict(color=BLUE),
            row=1,
            col=col,
        )
        # A stopped epoch is validated where it stopped, not at its end.
        val_x = [min(e["epoch"], snap.points[-1][0]) for e in validated]
        fig.add_scatter(
            x=val_x,
            y=[e[f"val_{name}"] for e in validated],
            name="validation (held-out training images)",
            legendgroup="validation",
            showlegend=col == 1,
            mode="lines+markers",
            line=dict(color=ORANGE),
            row=1,
            col=col,
        )
    # One tick per epoch, unless that many ticks would run into each other.
    dtick = 1 if snap.max_epochs <= 20 else None
    fig.update_xaxes(title="epoch", range=[0, snap.max_epochs], dtick=dtick)
    fig.update_layout(
        height=340,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.25),
    )
    return fig


HEALTH = {  # explain.TrainingHealth's columns: (title, y axis type); two-line
    # titles, so that three fit side by side in a narrow column
    "grad_norm": ("Gradient<br>norm", "log"),
    "update_ratio": ("Update /<br>weight", "log"),
    "dead_fraction": ("Dead<br>ReLUs", "linear"),
}


def training_health(snap) -> go.Figure:
    """Per-layer gradient norm, update-to-weight ratio and dead-ReLU fraction of a
    training job's snapshot, by epoch: one chart each, one line per layer."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for t, _ in HEALTH.values()])
    layers = list(dict.fromkeys(r["layer"] for r in snap.health))
    colours = px.colors.qualitative.D3
    for col, (key, (_, axis)) in enumerate(HEALTH.items(), start=1):
        for i, layer in enumerate(layers):
            rows = [r for r in snap.health if r["layer"] == layer]
            fig.add_scatter(
                x=[r["epoch"] for r in rows],
                y=[r[key] for r in rows],
                name=layer,
                legendgroup=layer,
                showlegend=col == 1,
                mode="lines",
                line=dict(color=colours[i % len(colours)]),
                row=1,
                col=col,
            )
        fig.update_yaxes(type=axis, row=1, col=col)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=3)
    fig.update_xaxes(title="epoch", range=[0, snap.max_epochs])
    fig.update_layout(
        height=320,
        margin=dict(l=10, r=10, t=60, b=10),
        # Hung by its top below the axis titles, however many rows it takes
        # (anchored by its bottom, Plotly's default down here, one row sat higher).
        legend=dict(orientation="h", yanchor="top", y=-0.3),
    )
    return fig


# -- Evaluate -----------------------------------------------------------------------


def confusion(matrix: np.ndarray, names: Sequence[str], height: int = 520) -> go.Figure:
    """Heatmap of counts (k, k) (row = true, column = predicted), each labelled.

    The colour scale tops out above the largest mistake count, so the mistakes
    show instead of being washed out by the diagonal. Plotly heatmaps cannot be
    selected, so a scatter of invisible square outlines, one per cell, takes the
    clicks; the clicked cell's outline shows.
    """
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    labels = [str(n) for n in names]
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=labels,
            y=labels,
            text=matrix,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=max(1, int(off.max()) * 1.5),
            showscale=False,
            hoverinfo="skip",
        )
    )
    true, pred = np.indices(matrix.shape).reshape(2, -1)
    fig.add_scatter(
        x=[labels[j] for j in pred],
        y=[labels[i] for i in true],
        customdata=matrix.ravel(),
        mode="markers",
        marker=dict(
            symbol="square-open", size=34, opacity=0, color=RED, line=dict(width=3)
        ),
        selected=dict(marker=dict(opacity=1)),
        unselected=dict(marker=dict(opacity=0)),
        hovertemplate="true %{y}, predicted %{x}: %{customdata} images<extra></extra>",
        showlegend=False,
    )
    k = len(labels)
    fig.update_xaxes(
        title="predicted", type="category", side="top", range=[-0.5, k - 0.5]
    )
    fig.update_yaxes(title="true", type="category", range=[k - 0.5, -0.5])
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        hoverdistance=-1,  # a click anywhere in a cell picks that cell
        clickmode="event+select",
    )
    return fig


def clicked_cell(event, names: Sequence[str]) -> tuple[int, int] | None:
    """(true, predicted) class indices of the cell clicked on ``confusion``'s
    chart, from the selection event ``st.plotly_chart`` returns; None if none."""
    points = (event or {}).get("selection", {}).get("points", [])
    if not points:
        return None
    lookup = {str(name): i for i, name in enumerate(names)}
    x, y = str(points[0].get("x")), str(points[0].get("y"))
    if x in lookup and y in lookup:
        return lookup[y], lookup[x]
    return None


def reliability(rel: Mapping) -> go.Figure:
    """``metrics.reliability``: the share right per confidence bin (bars) against
    the diagonal of perfect calibration, and the images per bin below (log)."""
    edges = np.asarray(rel["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.72, 0.28],
        vertical_spacing=0.04,
    )
    fig.add_bar(
        x=centres,
        y=[a if a is not None else 0 for a in rel["accuracy"]],
        width=width * 0.95,
        marker_color=BLUE,
        customdata=np.stack(
            [rel["count"], [c if c is not None else np.nan for c in rel["confidence"]]],
            axis=1,
        ),
        hovertemplate="accuracy %{y:.1%}<br>mean confidence %{customdata[1]:.1%}"
        "<br>%{customdata[0]} images<extra></extra>",
        name="accuracy",
        row=1,
        col=1,
    )
    fig.add_scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        line=dict(dash="dash", color="#888"),
        name="perfect calibration",
        hoverinfo="skip",
        row=1,
        col=1,
    )
    fig.add_bar(
        x=centres,
        y=rel["count"],
        width=width * 0.95,
        marker_color=GREY,
        text=rel["count"],
        textposition="outside",
        hovertemplate="%{y} images<extra></extra>",
        name="images",
        row=2,
        col=1,
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%", row=1, col=1)
    fig.update_xaxes(
        range=[0, 1], tickformat=".0%", title="confidence (top probability)", row=2
    )
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title="accuracy", row=1)
    fig.update_yaxes(type="log", title="images", row=2)
    fig.update_layout(height=480, margin=TIGHT, showlegend=False, bargap=0)
    return fig


def coverage(curve: Mapping, chosen: Mapping, threshold: float) -> go.Figure:
    """``metrics.coverage_curve``: accuracy against coverage over every threshold,
    with ``metrics.selective``'s point at ``threshold`` in red."""
    fig = go.Figure(
        go.Scatter(
            x=curve["coverage"],
            y=curve["accuracy"],
            customdata=curve["threshold"],
            mode="lines",
            line=dict(color=BLUE),
            hovertemplate="answers %{x:.1%} at accuracy %{y:.2%}"
            "<br>when at least %{customdata:.3f} sure<extra></extra>",
            name="curve",
        )
    )
    if chosen["kept"]:
        fig.add_scatter(
            x=[chosen["coverage"]],
            y=[chosen["accuracy"]],
            mode="markers",
            marker=dict(color=RED, size=12),
            hovertemplate=f"threshold {threshold:.2f}<extra></extra>",
            name="threshold",
        )
    fig.update_xaxes(title="coverage (share of test images answered)", tickformat=".0%")
    fig.update_yaxes(title="accuracy on those", tickformat=".1%")
    fig.update_layout(height=360, margin=TIGHT, showlegend=False)
    return fig


# -- Draw and Inspect -----------------------------------------------------------------


def probability_bars(p: np.ndarray, names: Sequence[str]) -> go.Figure:
    """One model's class probabilities (k,), the top one in red."""
    top = int(p.argmax())
    fig = go.Figure(
        go.Bar(
            x=list(names),
            y=p,
            marker_color=[RED if i == top else GREY for i in range(len(p))],
            hovertemplate="%{x}: %{y:.1%}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_layout(height=220, margin=TIGHT)
    return fig


def heatmap(
    z: np.ndarray, *, signed: bool, height: int = PIXEL_FIGURE, **kw
) -> go.Figure:
    """An image-like heat map of ``z`` (h, w): square pixels, row 0 at the top, no
    axes. ``signed``: red positive, blue negative, white at zero; else grey from
    black at 0. NaN (between tiled maps) shows blank. ``kw`` go to the trace."""
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


def _grid_height(grid: np.ndarray, width: int, low: int, high: int) -> int:
    """The height, in CSS pixels, that shows ``grid`` about ``width`` wide."""
    return int(np.clip(width * grid.shape[0] / grid.shape[1], low, high))


def layer_output(
    values: np.ndarray, names: Sequence[str], columns: int = 16
) -> go.Figure:
    """One layer's output for one image (``explain.LayerOutput.values``): maps
    (h, w, channels) tiled ``columns`` to a row, or a vector (n,) as bars, named
    by class if there is one value per class."""
    if values.ndim == 3:
        grid = tile(values.transpose(2, 0, 1), columns)  # (channels, h, w)
        height = _grid_height(grid, 700, 120, 700)
        return heatmap(grid, signed=bool(values.min() < 0), height=height)
    per_class = len(values) == len(names)
    x = list(names) if per_class else list(range(len(values)))
    fig = go.Figure(go.Bar(x=x, y=values, hovertemplate="%{x}: %{y:.3g}"))
    fig.update_xaxes(type="category" if per_class else "linear")
    fig.update_layout(height=200, margin=TIGHT)
    return fig


KERNEL_PIXELS = 110  # the largest side of a kernel shown, in CSS pixels
KERNEL_TITLE = 24  # room above each kernel for its title
KERNEL_FONT = 13  # the titles' size; smaller with more than 4 kernels to a row,
KERNEL_FONT_SMALL = 10  # so that "#57 in 29" fits above a kernel at 1024 px
# The width the kernels are drawn for: the main column at 1024-1280 px wide
# windows with the sidebar open, less the colour bar. Rows are as high as a kernel
# is wide at that width, so that kernels (square) fill their rows; wider windows
# show them as large.
KERNEL_FIGURE_WIDTH = 540


def conv_kernels(
    kernels: np.ndarray,
    filters: Sequence[int],
    channels: Sequence[int] | None = None,
    columns: int = 8,
) -> go.Figure:
    """Conv kernels (n, k, k), large, ``columns`` to a row, in the order given, on
    one colour scale: red weights excite, blue inhibit, white is 0.

    Each is titled with its filter's number ("#17"), and its input channel
    ("#17 in 3") when ``channels`` (n,) is given (``explain.strongest_kernels``
    picks them)."""
    kernels = np.asarray(kernels, dtype=np.float64)
    n = len(kernels)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    if channels is None:
        titles = [f"#{f}" for f in filters]
    else:
        titles = [f"#{f} in {c}" for f, c in zip(filters, channels, strict=True)]
    side = min(KERNEL_PIXELS, KERNEL_FIGURE_WIDTH // columns)
    height = rows * (side + KERNEL_TITLE) + KERNEL_TITLE
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=titles,
        horizontal_spacing=0.02,
        vertical_spacing=KERNEL_TITLE / height,
    )
    for i, kernel in enumerate(kernels):
        r, c = divmod(i, columns)
        fig.add_heatmap(
            z=kernel,
            coloraxis="coloraxis",
            hovertemplate=f"{titles[i]}<br>row %{{y}}, col %{{x}}: %{{z:.3g}}"
            "<extra></extra>",
            row=r + 1,
            col=c + 1,
        )
        axis = "" if i == 0 else str(i + 1)
        fig.layout[f"yaxis{axis}"].scaleanchor = f"x{axis}"  # square pixels
    top = float(np.abs(kernels).max()) if n else 1.0
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", constrain="domain")
    fig.update_annotations(font_size=KERNEL_FONT if columns <= 4 else KERNEL_FONT_SMALL)
    fig.update_layout(
        coloraxis=dict(
            colorscale=SIGNED, cmin=-top, cmax=top, colorbar=dict(thickness=10)
        ),
        height=height,
        margin=dict(l=0, r=0, t=KERNEL_TITLE, b=0),
    )
    return fig


PROBE_FIGURE = 200  # height of the probe's charts, beside its five sliders
PROBE_LAYOUT = dict(
    height=PROBE_FIGURE,
    margin=dict(l=10, r=10, t=30, b=10),
    legend=dict(orientation="h", y=1.02, yanchor="bottom"),
)


def probe_bars(probabilities: Mapping[str, np.ndarray], names) -> go.Figure:
    """``explain.probe``'s class probabilities, one group of bars per class and
    one bar per model."""
    fig = go.Figure(
        [
            go.Bar(name=model, x=list(names), y=p, hovertemplate="%{x}: %{y:.1%}")
            for model, p in probabilities.items()
        ]
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_layout(barmode="group", **PROBE_LAYOUT)
    return fig


def shift_sweep(
    curves: Mapping[str, Sequence[float]],
    shifts: Sequence[int],
    target_name: str,
    now: int,
) -> go.Figure:
    """``explain.sweep``: P(target) of each model for each shift to the right,
    with a dotted line at the slider's shift ``now``."""
    fig = go.Figure(
        [
            go.Scatter(x=list(shifts), y=p, name=model, mode="lines+markers")
            for model, p in curves.items()
        ]
    )
    fig.add_vline(x=now, line=dict(color=GREY, dash="dot"))
    fig.update_xaxes(title="shift right (px)", dtick=2)
    fig.update_yaxes(title=f"P({target_name})", range=[0, 1.02], tickformat=".0%")
    fig.update_layout(**PROBE_LAYOUT)
    return fig


# -- Experiments ------------------------------------------------------------------

SWEEP_LAYOUT = dict(
    height=330,
    margin=dict(l=10, r=10, t=40, b=10),
    legend=dict(orientation="h", y=-0.3),
)


def accuracy_against(
    summary: Sequence[Mapping],
    x: str,
    group: str,
    title: str,
    score: tuple[str, str, str] = ("accuracy_mean", "accuracy_std", "test accuracy"),
) -> go.Figure:
    """``experiments.summarise``'s mean accuracy against ``x`` (depth or width), ±
    one standard deviation across seeds, one line per ``group`` value. ``score``
    is (mean key, spread key, its name): what configurations are compared by,
    ``experiments.compared_by`` (the validation accuracy)."""
    mean, spread, words = score
    groups: dict = {}
    for row in summary:
        groups.setdefault(row[group], []).append(row)
    fig = go.Figure()
    for i, (value, rows) in enumerate(sorted(groups.items())):
        rows = sorted(rows, key=lambda r: r[x])
        fig.add_scatter(
            x=[r[x] for r in rows],
            y=[r[mean] for r in rows],
            error_y=dict(type="data", array=[r[spread] for r in rows]),
            text=[r["label"] for r in rows],
            hovertemplate="%{text}<br>accuracy %{y:.2%}<extra></extra>",
            mode="lines+markers",
            name=f"{group} {value}",
            line=dict(color=COLORS[i % len(COLORS)]),
        )
    fig.update_layout(title=title, **SWEEP_LAYOUT)
    # Categories: only the values tried, evenly spaced, even if there is one.
    values = sorted({r[x] for r in summary})
    fig.update_xaxes(
        title=x, type="category", categoryorder="array", categoryarray=values
    )
    fig.update_yaxes(title=words, tickformat=".1%")
    return fig


def pareto(
    summary: Sequence[Mapping],
    x: str,
    front: Sequence[bool],
    title: str,
    log_x: bool,
    score: tuple[str, str, str] = ("accuracy_mean", "accuracy_std", "test accuracy"),
) -> go.Figure:
    """Mean accuracy (``score``, as in ``accuracy_against``) against a cost ``x``
    of each configuration of ``summary``, the Pareto ``front``
    (``experiments.pareto_front`` on the same accuracy) starred and joined."""
    mean, spread, words = score
    cost = [r[x] for r in summary]
    acc = [r[mean] for r in summary]
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
        error_y=dict(type="data", array=[r[spread] for r in summary]),
        mode="markers",
        marker=dict(
            size=11,
            color=["#d62728" if f else BLUE for f in front],
            symbol=["star" if f else "circle" for f in front],
        ),
        text=[r["label"] for r in summary],
        hovertemplate="%{text}<br>%{x:,.3g}<br>accuracy %{y:.2%}<extra></extra>",
        name="configuration (★ on the front)",
    )
    fig.update_layout(title=title, **SWEEP_LAYOUT)
    fig.update_xaxes(title=x.replace("_", " "), type="log" if log_x else None)
    fig.update_yaxes(title=words, tickformat=".1%")
    return fig


def loss_curves(rows: Sequence[Mapping]) -> go.Figure:
    """Training loss of every trial of a sweep (running mean within each epoch),
    one colour per configuration, its seeds under one legend entry."""
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
    fig.update_layout(title="Training loss, every trial", **SWEEP_LAYOUT)
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="loss", type="log")
    return fig


# -- Evaluate: saved training curves of several runs -----------------------------------

RUN_CURVE_METRICS = (("loss", "Loss"), ("accuracy", "Accuracy"))


def run_curves(curves: Sequence[Mapping]) -> go.Figure:
    """Per-epoch loss and accuracy of several saved runs on one chart, as
    TensorBoard overlays runs: one colour per run, a solid line for its training
    images and a dashed one for its validation images.

    curves : one dict per run: ``name``, ``history`` (the run's per-epoch dicts,
        ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``epoch``) and
        ``validation``, the images its validation figures come from, in words.
    """
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=[title for _, title in RUN_CURVE_METRICS]
    )
    for i, curve in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        history = list(curve["history"])
        sets = (
            ("", "training images", "solid"),
            ("val_", f"validation: {curve['validation']}", "dash"),
        )
        for prefix, source, dash in sets:
            for col, (metric, title) in enumerate(RUN_CURVE_METRICS, start=1):
                points = [
                    (e.get("epoch", n), e[prefix + metric])
                    for n, e in enumerate(history, start=1)
                    if e.get(prefix + metric) is not None
                ]
                if not points:
                    continue
                fig.add_scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    name=f"{curve['name']} · {source}",
                    legendgroup=f"{curve['name']}{prefix}",
                    showlegend=col == 1,
                    line=dict(color=color, dash=dash),
                    hovertemplate=f"{curve['name']}<br>{source}<br>epoch %{{x}}<br>"
                    f"{title.lower()} %{{y:.4f}}<extra></extra>",
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(tickformat=".1%", row=1, col=2)
    fig.update_layout(
        height=420,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


# -- Draw: the layers beside a drawing, and one convolution ------------------------

STRIP_WIDTH = 640  # the width a strip is drawn for: Draw's main column at 1280 px
STRIP_MAPS = 16  # feature maps to a row of a strip
STRIP_UNITS = 32  # units to a row of a dense layer's strip
STRIP_LOW, STRIP_HIGH = 40, 190  # a strip's height range, CSS pixels


def layer_strip(values: np.ndarray, names: Sequence[str]) -> go.Figure:
    """One layer's output for one image as a compact strip (the Draw page).

    values : (h, w, c) feature maps, tiled ``STRIP_MAPS`` to a row, each map
        clickable (an invisible marker at its centre carries its channel as
        customdata: Plotly heat maps cannot be selected, and one marker per map
        keeps the chart light where one per pixel took seconds to draw); or (n,)
        units, as rows of ``STRIP_UNITS`` cells, labelled with ``names`` when
        there is one per class.
    Signed values show red and blue around white; non-negative ones grey.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3:
        h, w, c = values.shape
        columns = min(STRIP_MAPS, c)
        grid = tile(values.transpose(2, 0, 1), columns)
    else:
        n = len(values)
        columns = min(STRIP_UNITS, n)
        grid = np.full((math.ceil(n / columns), columns), np.nan)
        grid.ravel()[:n] = values
    fig = heatmap(
        grid,
        signed=bool(np.nanmin(grid) < 0),
        height=_grid_height(grid, STRIP_WIDTH, STRIP_LOW, STRIP_HIGH),
        showscale=False,
    )
    # float32 halves the chart sent on every stroke (Plotly sends arrays as
    # binary), and the strip only needs three digits.
    fig.update_traces(z=grid.astype(np.float32))
    if values.ndim == 1:
        per_class = n == len(names)
        text = np.full(grid.shape, "", dtype=object)
        text.ravel()[:n] = [
            str(names[i]) if per_class else f"unit {i}" for i in range(n)
        ]
        fig.update_traces(text=text, hovertemplate="%{text}: %{z:.3g}<extra></extra>")
        if per_class:
            fig.update_traces(texttemplate="%{text}")
        return fig
    channel = np.arange(c)
    fig.update_traces(hoverinfo="skip")
    fig.add_scatter(
        x=(channel % columns) * (w + 1) + (w - 1) / 2,  # where tile() put each map
        y=(channel // columns) * (h + 1) + (h - 1) / 2,
        customdata=np.stack([channel, values.max(axis=(0, 1))], 1),
        hovertemplate="map %{customdata[0]} (largest %{customdata[1]:.3g}): "
        "click to enlarge<extra></extra>",
        **_CLICKABLE,
        marker=dict(symbol="square-open", size=min(w, 20), opacity=0, color=ORANGE),
    )
    fig.update_layout(hoverdistance=-1, clickmode="event+select")
    return fig


GAP_RGB = (255, 255, 255)  # between the maps of a strip image, as the page


def _signed_lut() -> np.ndarray:
    """``SIGNED`` as 256 RGB colours (256, 3) uint8, -top at 0 and +top at 255."""
    scale = get_colorscale(SIGNED)
    stops = np.array([at for at, _ in scale])
    rgb = np.array([unlabel_rgb(colour) for _, colour in scale], dtype=np.float64)
    at = np.linspace(0, 1, 256)
    return np.stack([np.interp(at, stops, rgb[:, i]) for i in range(3)], 1).astype(
        np.uint8
    )


SIGNED_LUT = _signed_lut()


def coloured(grid: np.ndarray, signed: bool) -> np.ndarray:
    """``grid`` (h, w) as RGB (h, w, 3) uint8, in ``heatmap``'s colours: signed,
    red positive and blue negative around white at 0 (scaled to the largest
    magnitude); else grey from black at 0 to white at max(1, largest). NaN (between
    tiled maps) shows as ``GAP_RGB``."""
    grid = np.asarray(grid, dtype=np.float64)
    if signed:
        top = float(np.nanmax(np.abs(grid))) or 1.0
        index = np.clip((grid / top + 1) * 127.5, 0, 255)
        rgb = SIGNED_LUT[np.nan_to_num(index).round().astype(np.uint8)]
    else:
        top = max(1.0, float(np.nanmax(grid)))
        level = np.clip(np.nan_to_num(grid) / top * 255, 0, 255).round()
        rgb = np.repeat(level.astype(np.uint8)[..., None], 3, axis=2)
    rgb[np.isnan(grid)] = GAP_RGB
    return rgb


STRIP_LABEL_PIXELS = 18  # the class names written on a scores strip image


def strip_image(values: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """One layer's output for one image as one picture, RGB (H, W, 3) uint8, about
    ``STRIP_WIDTH`` pixels wide: what the Draw page shows after every stroke (a
    picture costs the browser almost nothing to draw; a Plotly chart per layer
    about 20-35 ms each, every stroke).

    values : (h, w, c) feature maps, tiled ``STRIP_MAPS`` to a row; or (n,) units
        in rows of ``STRIP_UNITS`` cells, each cell written with its class name
        when there is one unit per class in ``names``.
    Colours as ``layer_strip``'s: signed values red and blue around white, others
    grey from black; each pixel of a map (or each unit) a square of whole pixels.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3:
        grid = tile(values.transpose(2, 0, 1), min(STRIP_MAPS, values.shape[-1]))
    else:
        n = len(values)
        columns = min(STRIP_UNITS, n)
        grid = np.full((math.ceil(n / columns), columns), np.nan)
        grid.ravel()[:n] = values
    rgb = coloured(grid, signed=bool(np.nanmin(grid) < 0))
    factor = max(1, round(STRIP_WIDTH / grid.shape[1]))
    image = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    if values.ndim == 3 or len(values) != len(names):
        return image
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=STRIP_LABEL_PIXELS)
    for i, name in enumerate(names):  # dark text on light cells, light on dark
        light = rgb[0, i].astype(int).sum() > 3 * 140
        draw.text(
            ((i + 0.5) * factor, 0.5 * factor),
            str(name),
            fill=(0, 0, 0) if light else (255, 255, 255),
            font=font,
            anchor="mm",
        )
    return np.asarray(picture)


KERNELS_IMAGE_WIDTH = 480  # pixels across a picture of kernels, before the browser


def kernels_image(kernels: np.ndarray, columns: int = 8) -> np.ndarray:
    """Conv kernels (n, k, k) as one picture, RGB uint8, ``columns`` to a row on
    one colour scale (red weights positive, blue negative, white 0), each weight
    a square of whole pixels: the Train page's live first-layer filters, which a
    picture shows whole at any column width (a chart of small squares kept
    its rows' height when the column narrowed, leaving gaps between them)."""
    grid = tile(np.asarray(kernels, dtype=np.float64), columns)
    factor = max(1, round(KERNELS_IMAGE_WIDTH / grid.shape[1]))
    return coloured(grid, signed=True).repeat(factor, axis=0).repeat(factor, axis=1)


# Invisible markers that take a chart's clicks; the clicked one shows.
_CLICKABLE = dict(
    mode="markers",
    selected=dict(marker=dict(opacity=1)),
    unselected=dict(marker=dict(opacity=0)),
    showlegend=False,
)


def feature_map(values: np.ndarray, height: int = PIXEL_FIGURE) -> go.Figure:
    """One feature map (h, w), large, each pixel clickable (an invisible marker
    per pixel carries (row, col, value) as customdata)."""
    values = np.asarray(values, dtype=np.float64)
    fig = heatmap(values, signed=bool(values.min() < 0), height=height)
    row, col = np.indices(values.shape).reshape(2, -1)
    fig.update_traces(hoverinfo="skip")
    fig.add_scatter(
        x=col,
        y=row,
        customdata=np.stack([row, col, values[row, col]], 1),
        hovertemplate="row %{customdata[0]}, col %{customdata[1]}: "
        "%{customdata[2]:.4f}<extra></extra>",
        **_CLICKABLE,
        marker=dict(symbol="square-open", size=10, opacity=0, color=ORANGE),
    )
    fig.update_layout(hoverdistance=-1, clickmode="event+select")
    return fig


def clicked_point(event) -> int | None:
    """The index of the point clicked on a ``layer_strip`` (its map's channel) or
    a ``feature_map`` (row * width + col), from the selection event
    ``st.plotly_chart`` returns; None if none. (The index, not the customdata:
    the event's customdata of a binary-encoded 2-D array is not the row sent.)"""
    points = (event or {}).get("selection", {}).get("points", [])
    if not points:
        return None
    index = points[0].get("point_index", points[0].get("point_number"))
    return None if index is None else int(index)


CONV_CELL = 34  # CSS pixels of one cell of the window, kernel and products
CONV_TITLE = 30


def conv_arithmetic(
    window: np.ndarray, kernel: np.ndarray, products: np.ndarray, titles: Sequence[str]
) -> go.Figure:
    """One input map's part of a convolution, side by side: the window it read,
    the kernel and their element-wise products, each (k, k), every cell with its
    number. The window in grey (ink white), kernel and products red and blue."""
    k = len(window)
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=list(titles), horizontal_spacing=0.04
    )
    for i, (z, signed) in enumerate(
        [(window, False), (kernel, True), (products, True)], start=1
    ):
        z = np.asarray(z, dtype=np.float64)
        top = float(np.abs(z).max()) or 1.0
        colours = (
            dict(colorscale=SIGNED, zmin=-top, zmax=top)
            if signed
            else dict(colorscale="gray", zmin=0, zmax=max(1.0, top))
        )
        fig.add_heatmap(
            z=z,
            text=np.vectorize(lambda v: f"{v:.2f}")(z),
            texttemplate="%{text}",
            textfont=dict(size=9),
            showscale=False,
            hovertemplate="row %{y}, col %{x}: %{z:.4g}<extra></extra>",
            row=1,
            col=i,
            **colours,
        )
        axis = "" if i == 1 else str(i)
        fig.layout[f"yaxis{axis}"].scaleanchor = f"x{axis}"
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", constrain="domain")
    fig.update_layout(
        height=k * CONV_CELL + CONV_TITLE,
        margin=dict(l=0, r=0, t=CONV_TITLE, b=0),
    )
    return fig


# -- Train: the network as it trains (issue 19) ---------------------------------------


def mark_changes(fig: go.Figure, changes: Sequence[tuple[float, str]]) -> go.Figure:
    """Mark settings changed mid-run on ``training_curves``' figure: a dashed line
    at each (epochs done, words), labelled with the words on the loss plot."""
    for at, words in changes:
        line = dict(color=GREY, dash="dash", width=1)
        fig.add_vline(
            x=at, line=line, annotation_text=words, annotation_font_size=11, col=1
        )
        fig.add_vline(x=at, line=line, col=2)
    return fig


def activation_image(values: np.ndarray, columns: int = 8) -> np.ndarray:
    """One layer's output for one image, as a grey image to show (uint8): maps
    (h, w, channels) tiled ``columns`` to a row, or a vector (n,) as cells in rows
    of 16; black is 0 (or the lowest value), white the highest, grey between
    maps and after the last unit."""
    if values.ndim == 3:
        grid = tile(values.transpose(2, 0, 1), columns)  # (channels, h, w)
    else:  # units in rows of 16 (a long single row would be a hairline)
        n = len(values)
        width = min(n, 16)
        grid = np.full(math.ceil(n / width) * width, np.nan)
        grid[:n] = values
        grid = grid.reshape(-1, width)  # (rows, 16)
    low, high = np.nanmin(grid), np.nanmax(grid)
    scaled = (grid - min(low, 0.0)) / ((high - min(low, 0.0)) or 1.0)
    image = np.nan_to_num(scaled * 255, nan=128).astype(np.uint8)  # grey between
    return enlarge(image, 280 if values.ndim == 3 else 320)


# -- Draw: one step of backprop on the drawing (issue 19, item 5) ---------------------


def layer_gradient(values: np.ndarray, names: Sequence[str]) -> go.Figure:
    """The gradient of the loss arriving at one layer, for one drawing
    (``teach.Step.gradients``): maps (h, w, c) tiled ``STRIP_MAPS`` to a row, or
    (n,) units as bars (named by class when there is one per class). Red where
    making the value larger would raise the loss, blue where it would lower it;
    the colours are scaled to the layer's largest magnitude."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3:
        c = values.shape[-1]
        grid = tile(values.transpose(2, 0, 1), min(STRIP_MAPS, c))
        fig = heatmap(
            grid,
            signed=True,
            height=_grid_height(grid, STRIP_WIDTH, STRIP_LOW, STRIP_HIGH),
            showscale=False,
        )
        fig.update_traces(
            z=grid.astype(np.float32),
            hovertemplate="row %{y}, col %{x}: %{z:.3g}<extra></extra>",
        )
        return fig
    per_class = len(values) == len(names)
    x = list(names) if per_class else list(range(len(values)))
    fig = go.Figure(
        go.Bar(
            x=x,
            y=values,
            marker_color=[RED if v > 0 else BLUE for v in values],
            hovertemplate=("%{x}" if per_class else "unit %{x}")
            + ": %{y:.3g}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category" if per_class else "linear")
    fig.update_yaxes(zeroline=True, zerolinecolor=GREY)
    fig.update_layout(height=160, margin=TIGHT, bargap=0.1 if per_class else 0)
    return fig


def probabilities_moved(
    before: np.ndarray, after: np.ndarray, names: Sequence[str], label: int
) -> go.Figure:
    """Class probabilities (k,) before and after one step, side by side for each
    class; the digit the learner picked is marked on the axis."""
    ticks = [
        f"<b>{name}</b> ✓" if i == label else str(name) for i, name in enumerate(names)
    ]
    fig = go.Figure(
        [
            go.Bar(
                name="Before the step",
                x=ticks,
                y=before,
                marker_color=GREY,
                hovertemplate="%{x}: %{y:.1%} before<extra></extra>",
            ),
            go.Bar(
                name="After the step",
                x=ticks,
                y=after,
                marker_color=RED,
                hovertemplate="%{x}: %{y:.1%} after<extra></extra>",
            ),
        ]
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_layout(barmode="group", **PROBE_LAYOUT)
    return fig
