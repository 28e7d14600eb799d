"""Evaluate: a model's scores on the test set, its mistakes, and a second opinion."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import ui
from digits import metrics
from digits.errors import DigitsError

MAX_CELL_IMAGES = 60  # images shown for a clicked cell of the confusion matrix
ORDERS = {
    "loss": "Loss (least probability for the true class)",
    "confidence": "Confidence in the wrong class",
}


def pick_run(label: str, runs, key: str, default: int = 0):
    """A select box of runs; a remembered choice that no longer exists is dropped."""
    names = [run.name for run in runs]
    if st.session_state.get(key) not in names:
        st.session_state[key] = names[min(default, len(names) - 1)]
    by_name = {run.name: run for run in runs}
    name = st.selectbox(
        label,
        names,
        format_func=lambda n: ui.run_label(by_name[n]),
        key=key,
        persist_state="session",
    )
    return by_name[name]


def scores(run, ds):
    """Test-set probabilities and report of ``run``; stops the page on error."""
    try:
        proba = ui.test_predictions(run, ds)
        return proba, ui.test_report(run, ds, proba)
    except DigitsError as err:
        ui.show_error(err)
        st.stop()


def confusion_figure(matrix: np.ndarray, names) -> go.Figure:
    """Heatmap of counts (row = true, column = predicted), each cell labelled.

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
            symbol="square-open",
            size=34,
            opacity=0,
            color="#ff4b4b",
            line=dict(width=3),
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
        height=520,
        margin=dict(l=10, r=10, t=40, b=10),
        hoverdistance=-1,  # a click anywhere in a cell picks that cell
        clickmode="event+select",
    )
    return fig


def selected_cell(event, names) -> tuple[int, int] | None:
    """(true, predicted) class indices of the clicked cell, if any."""
    points = (event or {}).get("selection", {}).get("points", [])
    if not points:
        return None
    lookup = {str(name): i for i, name in enumerate(names)}
    x, y = str(points[0].get("x")), str(points[0].get("y"))
    if x in lookup and y in lookup:
        return lookup[y], lookup[x]
    return None


def top3(p: np.ndarray, names) -> str:
    best = np.argsort(-p)[:3]
    return "  \n".join(f"{names[c]}: {p[c]:.1%}" for c in best)


def confusion_tab(ds, proba, report) -> None:
    names = ds.class_names
    matrix = np.asarray(report["confusion_matrix"])
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.caption("Click a cell to see its test images.")
        event = st.plotly_chart(
            confusion_figure(matrix, names),
            on_select="rerun",
            selection_mode=("points",),
            key="confusion",
            config={"displayModeBar": False},
        )
    with right:
        st.caption("Scores per class")
        st.dataframe(
            [
                {
                    "Class": row["class"],
                    "Precision": row["precision"],
                    "Recall": row["recall"],
                    "F1": row["f1"],
                    "Support": row["support"],
                }
                for row in report["per_class"]
            ],
            hide_index=True,
            column_config={
                name: st.column_config.NumberColumn(format="%.3f")
                for name in ("Precision", "Recall", "F1")
            },
        )
    cell = selected_cell(event, names)
    if cell is None:
        return
    true, pred = cell
    chosen = np.flatnonzero((ds.y_test == true) & (proba.argmax(axis=1) == pred))
    chosen = chosen[np.argsort(-proba[chosen, pred], kind="stable")]
    st.subheader(f"True {names[true]}, predicted {names[pred]}: {len(chosen)} images")
    st.caption("Most confident first; the caption is the model's probability.")
    shown = chosen[:MAX_CELL_IMAGES]
    ui.gallery(
        ds.x_test[shown],
        [f"{proba[i, pred]:.1%}" for i in shown],
        empty="No test image falls in this cell.",
    )


def mistakes_tab(ds, proba) -> None:
    left, right = st.columns(2)
    order = left.selectbox(
        "Worst first, by", list(ORDERS), format_func=ORDERS.get, key="evaluate-order"
    )
    n_show = right.slider("Images", 12, 120, 36, step=12, key="evaluate-n-mistakes")
    wrong = metrics.misclassified(ds.y_test, proba, order=order)
    st.caption(
        f"{len(wrong):,} of {len(ds.y_test):,} test images are misclassified. "
        "Caption: true → predicted, then the top 3 probabilities."
    )
    names = ds.class_names
    shown = wrong[:n_show]
    ui.gallery(
        ds.x_test[shown],
        [
            f"**{names[ds.y_test[i]]} → {names[proba[i].argmax()]}**  \n"
            f"{top3(proba[i], names)}"
            for i in shown
        ],
        empty="No mistakes at all.",
    )


def compare_tab(ds, run, proba, runs) -> None:
    others = [r for r in runs if r.name != run.name]
    if not others:
        st.info("Train a second model on this dataset to compare the two.")
        return
    # By default compare with a model of another kind (e.g. the CNN with the MLP).
    default = next((i for i, r in enumerate(others) if r.kind != run.kind), 0)
    other = pick_run("Compare with", others, "evaluate-other", default)
    proba_b, report_b = scores(other, ds)
    d = metrics.disagreement(proba, proba_b, ds.y_test)
    st.caption(f"A = **{run.name}**, B = **{other.name}**")
    cols = st.columns(5)
    cols[0].metric("Accuracy of A", f"{ui.test_report(run, ds, proba)['accuracy']:.2%}")
    cols[1].metric("Accuracy of B", f"{report_b['accuracy']:.2%}")
    cols[2].metric(
        "They disagree on",
        f"{len(d['indices']):,}",
        help=f"{d['rate']:.2%} of the test set",
    )
    cols[3].metric("Only A right", f"{d['only_a_right']:,}")
    cols[4].metric("Only B right", f"{d['only_b_right']:,}")
    names = ds.class_names
    shown = np.asarray(d["indices"][:60], dtype=np.int64)
    st.caption(
        f"Test images on which they disagree (first {len(shown)}). Caption: the "
        "true class, then the predictions of A and B."
    )
    ui.gallery(
        ds.x_test[shown],
        [
            f"true **{names[ds.y_test[i]]}**  \nA: {names[proba[i].argmax()]} · "
            f"B: {names[proba_b[i].argmax()]}"
            for i in shown
        ],
        empty="The two models agree on every test image.",
    )


ui.page_header(
    "Evaluate",
    "How a model does on the test set, where it goes wrong, and how it compares "
    "with another model.",
)
ds = ui.active_dataset()
runs = ui.runs_for(ds)
if not runs:
    st.info(
        f"No model has been trained on {ui.dataset_label(ds.name)} yet. Train one on "
        "the Train page.",
        icon=":material/info:",
    )
    st.stop()
run = pick_run("Model", runs, "evaluate-model")
proba, report = scores(run, ds)
cols = st.columns(4)
cols[0].metric("Test accuracy", f"{report['accuracy']:.2%}")
cols[1].metric("Mistakes", f"{round((1 - report['accuracy']) * report['n']):,}")
cols[2].metric("Macro F1", f"{report['macro']['f1']:.3f}")
cols[3].metric("Mean loss", f"{report['loss']:.3f}", help="Cross-entropy per image.")

# Only the open tab is drawn: the galleries are most of the page's work.
confusion, mistakes, compare = st.tabs(
    ["Confusion matrix", "Misclassified images", "Compare two models"],
    key="evaluate-tab",
    on_change="rerun",
)
if confusion.open:
    with confusion:
        confusion_tab(ds, proba, report)
if mistakes.open:
    with mistakes:
        mistakes_tab(ds, proba)
if compare.open:
    with compare:
        compare_tab(ds, run, proba, runs)
