"""Home, and the dashboard's entry point: ``streamlit run app.py`` (or ``digits
dashboard``). Choose the dataset, look at samples of each class, see the saved
models, and rename, tag or delete them.

The other pages are the files in ``pages/``, which Streamlit finds by itself and
serves at ``/train``, ``/evaluate``, ``/draw``, ``/inspect`` and ``/experiments``.
Every page starts with ``ui.page_header``, which refuses browsers on other
machines (unless serving the network was asked for) and draws the sidebar's
links. Shared Streamlit helpers are in ``ui.py``; all model logic is in the
``digits`` package.
"""

from collections.abc import Callable

import streamlit as st

import ui
from digits import data, figures, registry, store
from digits.errors import DigitsError

SAMPLES_PER_CLASS = 24
SEED_KEY = "home-sample-seed"
MANAGE_KEY = "home-manage-run"  # the run chosen under "Manage runs"
MANAGE_NOTICE_KEY = "home-manage-notice"  # the outcome of the last change, once


def choose_dataset() -> None:
    """The dataset select box, the CSV uploader and the retry-download button."""
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    choice = left.selectbox(
        "Dataset",
        list(ui.DATASET_LABELS),
        format_func=ui.DATASET_LABELS.get,
        key=ui.DATASET_KEY,
        persist_state="session",
        help="The dataset every page uses: training, evaluation and samples.",
    )
    if choice == ui.CSV_CHOICE:
        upload = right.file_uploader(
            "CSV of flattened square images with a label column",
            type="csv",
            help="Kaggle's Digit Recognizer layout (label,pixel0,...) or "
            "headerless with the label first or last.",
            max_upload_size=ui.CSV_LIMIT_MB,
        )
        if upload is not None:
            try:
                ui.take_csv_upload(upload)
            except DigitsError as err:
                ui.show_error(err)
        if not st.session_state.get(ui.CSV_KEY):
            shown = ui.dataset_label(ui.shown_dataset_name())
            right.info(f"No CSV uploaded yet: showing {shown}.", icon=":material/info:")
    fallbacks = st.session_state.get(ui.FALLBACK_KEY, {})
    if ui.dataset_name() in fallbacks:
        right.button(
            "Try the download again",
            icon=":material/refresh:",
            on_click=lambda: fallbacks.pop(ui.dataset_name(), None),
        )


def models_table(ds) -> None:
    """The saved models with their test accuracy (sweep trials only if asked
    for); notices for missing defaults and broken runs."""
    runs, broken = ui.all_runs()
    names = {run.name for run in runs}
    if "default-cnn" not in names:
        st.info(
            "The shipped default CNN is not installed yet. Train a CNN on the Train "
            "page, or restore it with the command below.",
            icon=":material/info:",
        )
        with st.expander("The command that restores it"):
            st.code(
                "python -m digits train --model cnn --preset default "
                f"--out {store.PRETRAINED_DIR / 'cnn'}",
                language="bash",
                wrap_lines=True,
            )
    if not runs:
        st.info("No saved models yet. Train one on the Train page.")
    else:
        listed = ui.offered_runs(runs, [], "home-models")
        rows = [
            {
                "Model": run.name,
                "Kind": registry.MODELS[run.kind].label,
                "Dataset": ui.dataset_label(str(run.meta["dataset"]["name"])),
                "Test accuracy": run.test_accuracy,
                "Epochs": len(run.meta.get("history") or []),
                "Training images": run.meta["dataset"].get("n_train"),
                "Trained": (run.meta.get("created") or "")[:16].replace("T", " "),
                "Tags": ", ".join(run.tags),
                "Sweep": run.sweep or "",
                "Note": "shipped"
                if run.pretrained
                else (run.meta.get("stopped") or ""),
            }
            for run in listed
        ]
        st.dataframe(
            rows,
            hide_index=True,
            column_config={
                "Test accuracy": st.column_config.ProgressColumn(
                    format="percent", min_value=0.0, max_value=1.0
                ),
                "Training images": st.column_config.NumberColumn(format="localized"),
            },
        )
        usable = len(ui.runs_for(ds))
        st.caption(
            f"{usable} of {len(runs)} models were trained on this dataset. Test "
            "accuracy: the share of its dataset's test images a model reads right."
        )
    for bad in broken:
        if bad.legacy:
            text = (
                f"The saved model **{bad.path.name}** was made by an older version "
                "of this app, in a file format that could hide a program inside. "
                "To keep this computer safe it is not opened. Train it again, or "
                "convert it if you made it yourself."
            )
        else:
            text = (
                f"The saved model **{bad.path.name}** is damaged, so it is left out. "
                "Delete its folder, or train it again."
            )
        with st.container():
            st.warning(text, icon=":material/warning:")
            with st.expander(f"Details: {bad.path.name}"):
                st.code(bad.error, language=None, wrap_lines=True)


def _change(action: Callable[[], str]) -> None:
    """A Manage-runs button's callback: ``action()`` makes the change and returns
    what to say; the outcome (or the error) waits for the page's next run."""
    try:
        message = action()
    except DigitsError as err:
        ui.keep_notice(MANAGE_NOTICE_KEY, "error", str(err))
        return
    ui.keep_notice(MANAGE_NOTICE_KEY, "success", message)


def _rename(run: store.Run, key: str) -> str:
    renamed = store.rename_run(run, st.session_state[key])
    st.session_state[MANAGE_KEY] = renamed.name  # keep it chosen
    return f"Renamed {run.name} to {renamed.name}."


def _tag(run: store.Run, key: str) -> str:
    tagged = store.set_tags(run, st.session_state[key])
    listed = ", ".join(tagged.tags) or "no tags"
    return f"{run.name} now has {'tags: ' if tagged.tags else ''}{listed}."


def _delete(run: store.Run) -> str:
    store.delete_run(run)
    return f"Deleted {run.name}."


def _text_and_button(
    field: tuple[str, str, str],
    help_text: str,
    button: tuple[str, str, str],
    action: Callable[[], str],
    disabled: bool,
) -> None:
    """A text box (label, value, key) and the button (label, icon, key) that
    applies it with ``action`` (see ``_change``)."""
    label, value, key = field
    st.text_input(label, value=value, key=key, disabled=disabled, help=help_text)
    label, icon, key = button
    st.button(
        label,
        icon=icon,
        disabled=disabled,
        on_click=_change,
        args=(action,),
        key=key,
    )


def manage_runs() -> None:
    """Rename, tag or delete one saved run; the shipped ones stay as they are."""
    st.subheader("Manage runs")
    ui.show_notice(MANAGE_NOTICE_KEY)
    runs = ui.all_runs()[0]
    if not runs:
        return
    run = ui.pick_run("Run to change", runs, MANAGE_KEY)
    if run.pretrained:
        st.caption(
            "This model ships with the app, and the pages fall back to it: it "
            "cannot be renamed, tagged or deleted. Choose one of your own runs."
        )
    name_key, tags_key = f"home-new-name-{run.name}", f"home-tags-{run.name}"
    sure_key = f"home-delete-sure-{run.name}"
    # A small gap leaves each button its label's width in presenter mode too.
    rename, tag, delete = st.columns(3)
    with rename:
        _text_and_button(
            ("New name", run.name, name_key),
            "Letters, digits, '.', '_' and '-'; other characters become '-'.",
            ("Rename", ":material/edit:", "home-rename"),
            lambda: _rename(run, name_key),
            run.pretrained,
        )
    with tag:
        _text_and_button(
            ("Tags", ", ".join(run.tags), tags_key),
            "Short labels to find the run again, separated by commas.",
            ("Save tags", ":material/sell:", "home-tag"),
            lambda: _tag(run, tags_key),
            run.pretrained,
        )
    with delete:
        sure = st.checkbox("Yes, delete it", key=sure_key, disabled=run.pretrained)
        st.button(
            "Delete",
            icon=":material/delete:",
            type="primary",
            help="Removes the model and its files for good.",
            disabled=run.pretrained or not sure,
            on_click=_change,
            args=(lambda: _delete(run),),
            key="home-delete",
        )


ui.page_header(
    "Home",
    "Explore a dataset, train classifiers on it, evaluate them, and draw your own "
    "digits for them to read.",
    title=ui.dataset_title(),
)
choose_dataset()
ds = ui.active_dataset()

h, w = ds.x_train.shape[1:]
ui.metric_row(
    ("Classes", len(ds.class_names), "How many kinds of image there are."),
    (
        "Training images",
        f"{len(ds.x_train):,}",
        "The images models learn from. Of these, "
        f"{data.validation_split(ds).rule} are held out as validation images: "
        "never learned from, they check a model while it trains.",
    ),
    (
        "Test images",
        f"{len(ds.x_test):,}",
        "Images kept apart from all training, to score a finished model fairly.",
    ),
    ("Image size", f"{h}x{w}", "Height x width, in pixels."),
)

head, button = st.columns([3, 1], vertical_alignment="bottom")
head.subheader("Random samples of each class")
if button.button("Shuffle", icon=":material/shuffle:", width="stretch"):
    st.session_state[SEED_KEY] = st.session_state.get(SEED_KEY, 0) + 1
ui.chart(
    figures.class_samples(
        ds.x_train,
        ds.y_train,
        ds.class_names,
        SAMPLES_PER_CLASS,
        st.session_state.get(SEED_KEY, 0),
    ),
    f"Drawn at random from the {len(ds.x_train):,} training images, "
    f"{SAMPLES_PER_CLASS} of each class.",
)
st.subheader("Models")
models_table(ds)
manage_runs()
