"""Evaluate: a model's scores on the test set, its mistakes, a second opinion,
and the saved training curves of several runs side by side."""

import time
from functools import partial

import numpy as np
import streamlit as st

import ui
from digits import data, figures, handwriting, metrics, polish, teach
from digits.errors import DigitsError

MAX_GALLERY = 60  # images in one gallery (a confusion cell, a disagreement)
HW_NOTICE_KEY = "hw-notice"  # the outcome of the last Delete, shown once
EXPORTS = {  # file suffix -> (MIME type, the HandwritingStore method making it)
    "npz": ("application/octet-stream", "export_npz"),
    "csv": ("text/csv", "export_csv"),
}
ORDERS = {
    "loss": "Loss (least probability for the true class)",
    "confidence": "Confidence in the wrong class",
}


def top3(p: np.ndarray, names) -> str:
    best = np.argsort(-p)[:3]
    return "  \n".join(f"{names[c]}: {p[c]:.1%}" for c in best)


def confusion_tab(ds, proba, report) -> None:
    names = ds.class_names
    matrix = np.asarray(report["confusion_matrix"])
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.caption(
            f"The {len(ds.y_test):,} test images: each row is a true class, each "
            "column the model's answer, so the diagonal holds the right answers. "
            "Click a cell to see its images."
        )
        event = ui.chart(
            figures.confusion(matrix, names),
            on_select="rerun",
            selection_mode=("points",),
            key="confusion",
        )
    with right:
        st.caption(
            "Scores per class, on the test images. Precision: of the images the "
            "model calls this class, the share that are. Recall: of the images of "
            "this class, the share it finds. F1 combines the two; support is how "
            "many test images the class has."
        )
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
    cell = figures.clicked_cell(event, names)
    if cell is None:
        return
    true, pred = cell
    chosen = metrics.confusion_cell(ds.y_test, proba, true, pred)
    st.subheader(f"True {names[true]}, predicted {names[pred]}: {len(chosen)} images")
    st.caption(
        "Test images, most confident first; under each, how sure the model was "
        "of this answer."
    )
    shown = chosen[:MAX_GALLERY]
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
    n_show = right.slider(
        "Images",
        12,
        120,
        36,
        step=12,
        key="evaluate-n-mistakes",
        help="How many of the misread test images to show.",
    )
    wrong = metrics.misclassified(ds.y_test, proba, order=order)
    st.caption(
        f"{len(wrong):,} of the {len(ds.y_test):,} test images are misread. "
        "Under each: the true class → the model's answer, then its three likeliest "
        "classes with their probabilities."
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


def compare_tab(ds, run, proba, report, runs) -> None:
    others = [r for r in runs if r.name != run.name]
    if not others:
        st.info("Train a second model on this dataset to compare the two.")
        return
    # By default compare with a model of another kind (e.g. the CNN with the MLP).
    default = next((i for i, r in enumerate(others) if r.kind != run.kind), 0)
    other = ui.pick_run("Compare with", others, "evaluate-other", default)
    proba_b, report_b = ui.test_scores(other, ds)
    d = metrics.disagreement(proba, proba_b, ds.y_test)
    st.caption(f"A = **{run.name}**, B = **{other.name}**")
    ui.metric_row(
        ("Accuracy of A", f"{report['accuracy']:.2%}"),
        ("Accuracy of B", f"{report_b['accuracy']:.2%}"),
        (
            "They disagree on",
            f"{len(d['indices']):,}",
            f"{d['rate']:.2%} of the test set",
        ),
        ("Only A right", f"{d['only_a_right']:,}"),
        ("Only B right", f"{d['only_b_right']:,}"),
    )
    names = ds.class_names
    shown = np.asarray(d["indices"][:MAX_GALLERY], dtype=np.int64)
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


def calibration_tab(ds, proba) -> None:
    left, right = st.columns(2, gap="large")
    with left:
        n_bins = st.select_slider(
            "Confidence bins",
            [5, 10, 15, 20],
            value=10,
            key="evaluate-bins",
            help="How many groups the test images are sorted into by how sure "
            "the model is of its answer.",
        )
        rel = metrics.reliability(ds.y_test, proba, n_bins)
        st.metric(
            "Expected calibration error",
            f"{rel['ece']:.2%}",
            help="How far the model's confidence is from how often it is right, "
            "on average over the test images: 0% means that when it says 90% sure "
            "it is right 90% of the time.",
        )
        st.caption(
            f"Reliability diagram of the {len(ds.y_test):,} test images, grouped "
            "by how sure the model is of its answer. A bar on the dashed diagonal "
            'means that "p sure" is right p of the time; a bar below it, that the '
            "model is surer than it should be."
        )
        ui.chart(figures.reliability(rel))
    with right:
        threshold = st.slider(
            "Answer only when at least this sure",
            0.10,
            1.00,
            0.90,
            0.01,
            key="evaluate-threshold",
            help="The model answers an image only when its top probability "
            "reaches this, and leaves the others to a person.",
        )
        chosen = metrics.selective(ds.y_test, proba, threshold)
        accuracy = chosen["accuracy"]
        ui.metric_row(
            (
                "Coverage",
                f"{chosen['coverage']:.1%}",
                "The share of the test images the model answers at this threshold.",
            ),
            ("Accuracy on those", "-" if accuracy is None else f"{accuracy:.2%}"),
            ("Mistakes left", f"{chosen['errors']:,}"),
        )
        st.caption(
            f"At {threshold:.0%} the model answers {chosen['kept']:,} of "
            f"{chosen['n']:,} test images and passes on the rest."
        )
        st.caption(
            "Accuracy against coverage on the test images, for every threshold: "
            "answering fewer images buys accuracy. Red: the slider's threshold."
        )
        ui.chart(
            figures.coverage(
                metrics.coverage_curve(ds.y_test, proba), chosen, threshold
            )
        )
    ui.how_computed(
        "digits.metrics.reliability",
        "digits.metrics.selective",
        "digits.metrics.coverage_curve",
        note="Expected calibration error: the gap between each bin's mean "
        "confidence and its accuracy, averaged with each bin weighted by its "
        "number of images.",
    )


def misread_caption(drawing_id: int, true: str, predicted: str, p: float) -> str:
    """ "#12 **7** ✓ 98%", or "#12 **7 → 1** ✗ 64%" on a red background."""
    if true == predicted:
        return f"#{drawing_id} **{true}** ✓ {p:.0%}"
    return f"#{drawing_id} :red-background[**{true} → {predicted}** ✗] {p:.0%}"


def handwriting_scores(ds, run, report, saved) -> None:
    """Accuracy and confusion matrices (yours beside the test set's), then the
    drawings with the model's readings."""
    names = ds.class_names
    try:
        proba = handwriting.predict(ui.load_model(run), saved, len(names))
    except DigitsError as err:
        ui.show_error(err)
        return
    mine = metrics.report(saved.labels, proba, names)
    n, read = mine["n"], round(mine["accuracy"] * mine["n"])
    ui.metric_row(
        (
            "Accuracy on my handwriting",
            f"{mine['accuracy']:.1%}",
            f"{read} of {n} drawings read right",
        ),
        (f"Accuracy on {ui.dataset_label(ds.name)} test", f"{report['accuracy']:.2%}"),
        ("Misread drawings", f"{n - read} of {n}"),
    )
    sets = (
        (f"Your {n} drawings", mine["confusion_matrix"], "hw-confusion-mine"),
        (
            f"{ui.dataset_label(ds.name)} test set",
            report["confusion_matrix"],
            "hw-confusion-test",
        ),
    )
    for col, (title, matrix, key) in zip(st.columns(2, gap="large"), sets, strict=True):
        with col:
            st.caption(
                f"**{title}**: each row is the true digit, each column the model's "
                "reading."
            )
            ui.chart(figures.confusion(np.asarray(matrix), names, 400), key=key)
    only_misreads = st.toggle("Only misreads", key="hw-only-misreads")
    predicted = proba.argmax(axis=1)
    shown = np.flatnonzero(predicted != saved.labels) if only_misreads else np.arange(n)
    st.caption(
        "Your drawings as the model sees them (28x28, oldest first): id, true digit, "
        "and how sure the model is of its reading; misreads framed in red."
    )
    ui.gallery(
        figures.framed(saved.images[shown], predicted[shown] != saved.labels[shown]),
        [
            misread_caption(
                int(saved.ids[i]),
                names[saved.labels[i]],
                names[predicted[i]],
                float(proba[i].max()),
            )
            for i in shown
        ],
        empty="The model reads every drawing right.",
    )


def delete_drawings(delete, widget: str, reset, message: str) -> None:
    """A Delete button's callback: ``delete()`` returns how many drawings went;
    the outcome waits in the session for the next run and ``widget`` is reset."""
    try:
        deleted = delete()
    except DigitsError as err:
        ui.keep_notice(HW_NOTICE_KEY, "error", str(err))
        return
    st.session_state[widget] = reset
    ui.keep_notice(HW_NOTICE_KEY, "success", message.format(deleted))


def manage_drawings(hw, saved) -> None:
    """Download the drawings, or delete some or all of them."""
    st.subheader("Export or delete")
    ui.show_notice(HW_NOTICE_KEY)
    if not len(saved.ids):
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    left, right = st.columns(2, gap="large")
    with left:
        st.caption(
            "Download your drawings with their labels: as a NumPy file (.npz) for "
            "your own programs, or as a CSV that Home can load as a dataset."
        )
        for suffix, (mime, export) in EXPORTS.items():
            st.download_button(
                f"Download .{suffix}",
                getattr(hw, export)(),
                file_name=f"my-handwriting-{stamp}.{suffix}",
                mime=mime,
                icon=":material/download:",
                key=f"hw-export-{suffix}",
            )
    with right:
        when = {
            int(i): time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
            for i, t in zip(saved.ids, saved.times, strict=True)
        }
        label = dict(zip(saved.ids.tolist(), saved.labels.tolist(), strict=True))
        chosen = st.multiselect(
            "Drawings to delete",
            list(when),
            format_func=lambda i: f"#{i} · {label[i]} · {when[i]}",
            key="hw-delete-ids",
        )
        st.button(
            "Delete chosen",
            icon=":material/delete:",
            disabled=not chosen,
            on_click=delete_drawings,
            args=(
                partial(hw.delete, chosen),
                "hw-delete-ids",
                [],
                "Deleted {} drawings.",
            ),
            key="hw-delete",
        )
        sure = st.checkbox(
            f"Yes, delete all {len(saved.ids)} drawings", key="hw-confirm-clear"
        )
        st.button(
            "Delete all",
            icon=":material/delete_forever:",
            type="primary",
            disabled=not sure,
            on_click=delete_drawings,
            args=(hw.clear, "hw-confirm-clear", False, "Deleted all {} drawings."),
            key="hw-clear",
        )
    ui.how_computed(
        "digits.handwriting.HandwritingStore",
        note=f"Saved in {hw.path}. The .npz file holds images (n, 28, 28) as uint8 "
        "and labels (n,); read it with numpy.load(path, allow_pickle=False).",
    )


def curves_tab(chosen: list[str]) -> None:
    """The per-epoch curves saved with each chosen run, on one chart. They are
    read from the runs' files, so runs of any dataset can be compared, even one
    that cannot be loaded here (MNIST's, offline)."""
    runs = ui.all_runs()[0]
    picked = ui.pick_runs(
        "Runs to compare",
        runs,
        default=[name for name in chosen if any(r.name == name for r in runs)],
        key="evaluate-curves",
        placeholder="Choose one or more runs",
    )
    if not picked:
        st.info("Choose one or more runs to see how their training went.")
        return
    ui.chart(
        figures.run_curves(
            [
                {
                    "name": run.name,
                    "history": run.meta.get("history") or [],
                    "validation": run.validated_on,
                }
                for run in picked
            ]
        ),
        "Loss and accuracy after each epoch (one pass over the training images), "
        "as saved when each run was trained. Solid lines: the training images the "
        "model learned from. Dashed lines: its validation images, training images "
        "held out from learning to check it (the legend says which). The loss "
        "says how wrong the model's probabilities are: lower is better. A gap "
        "that opens between the two means the model memorises its training "
        "images instead of learning what generalises.",
    )
    for run in picked:
        if epochs := polish.polish_epochs(run.meta.get("history") or []):
            which = (
                f"epoch {epochs[0]} is"
                if len(epochs) == 1
                else f"epochs {epochs[0]}-{epochs[-1]} are"
            )
            st.caption(
                f"**{run.name}**: {which} a short polish on the training images "
                "as written, without the warps of the epochs before, so its "
                "training curves jump there; the validation curve shows what it "
                "gained."
            )


def taught_note(left_out: int, n: int) -> None:
    """Says that the ``left_out`` drawings the model learned from are not scored,
    and how many (``n``) are."""
    were, they = ("was", "it is") if left_out == 1 else ("were", "they are")
    text = (
        f"{left_out} of your drawings {were} used to teach this model, so {they} "
        "left out here"
    )
    if n:
        st.info(
            f"{text}: a model reads the drawings it learned from better than new "
            f"ones, which would make it look better than it is. It is scored on "
            f"the other {n}.",
            icon=":material/school:",
        )
    else:
        st.info(
            f"{text}, and none are left to test it on. Draw and save some new "
            "digits on the Draw page to see how it reads your handwriting.",
            icon=":material/school:",
        )
        st.page_link("pages/draw.py", label="Draw some", icon=":material/draw:")
    ui.how_computed(
        "digits.teach.unseen_drawings",
        note="The ids of the drawings a model was taught on are kept in its "
        "run's metadata.json (taught_on).",
    )


def handwriting_tab(ds, run, report) -> None:
    hw = handwriting.HandwritingStore()
    saved = ui.saved_drawings(hw)
    st.caption(
        f"Digits you drew and labelled on the Draw page ({len(saved.ids)} saved on "
        f"this computer), read by **{run.name}**."
    )
    if not len(saved.ids):
        st.info(
            "No drawings saved yet: on the Draw page, draw a digit, pick the digit "
            "you meant and press Save.",
            icon=":material/draw:",
        )
        st.page_link("pages/draw.py", label="Draw some", icon=":material/draw:")
    elif (
        run.class_names != data.DIGIT_NAMES or run.image_shape != saved.images.shape[1:]
    ):
        h, w = run.image_shape
        st.info(
            f"Your drawings are 28x28 digits, for MNIST-style models; {run.name} "
            f"reads {h}x{w} images of {ui.dataset_label(ds.name)}. Choose MNIST on "
            "Home to test a digit model on them."
        )
    else:
        unseen, left_out = teach.unseen_drawings(saved, run)
        if left_out:
            taught_note(left_out, len(unseen.ids))
        if len(unseen.ids):
            handwriting_scores(ds, run, report, unseen)
    manage_drawings(hw, saved)


ui.page_header(
    "Evaluate",
    "How a model does on the test set (images kept apart, never used in "
    "training), where it goes wrong, how it compares with another model, how far "
    "to trust its confidence, and how it reads your own handwriting.",
)
ds = ui.active_dataset()
runs = ui.runs_for(ds)
if not runs:
    st.info(
        f"No model has been trained on {ui.dataset_label(ds.name)} yet. Train one on "
        "the Train page. The saved training curves of the other models are below.",
        icon=":material/info:",
    )
    st.subheader("Training curves")
    curves_tab([run.name for run in ui.all_runs()[0] if run.pretrained])
    st.stop()
run = ui.pick_run("Model", runs, "evaluate-model")
proba, report = ui.test_scores(run, ds)
ui.metric_row(
    (
        "Test accuracy",
        f"{report['accuracy']:.2%}",
        f"The share of the {report['n']:,} test images the model reads right.",
    ),
    (
        "Mistakes",
        f"{round((1 - report['accuracy']) * report['n']):,}",
        "Test images it reads wrong.",
    ),
    (
        "Macro F1",
        f"{report['macro']['f1']:.3f}",
        "F1 combines a class's precision and recall (1 is perfect); macro: "
        "averaged over the classes, each counting the same.",
    ),
    (
        "Mean loss",
        f"{report['loss']:.3f}",
        "How surprised the model is by the true classes, on average over the "
        "test images: minus the log of the probability it gives the true class "
        "(cross-entropy). Lower is better.",
    ),
)

# Only the open tab is drawn: the galleries are most of the page's work.
TABS = {
    "Confusion matrix": lambda: confusion_tab(ds, proba, report),
    "Misclassified images": lambda: mistakes_tab(ds, proba),
    "Compare two models": lambda: compare_tab(ds, run, proba, report, runs),
    "Calibration": lambda: calibration_tab(ds, proba),
    "My handwriting": lambda: handwriting_tab(ds, run, report),
    "Training curves": lambda: curves_tab([run.name]),
}
tabs = st.tabs(list(TABS), key="evaluate-tab", on_change="rerun")
for tab, draw in zip(tabs, TABS.values(), strict=True):
    if tab.open:
        with tab:
            draw()
