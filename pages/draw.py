"""Draw: draw a digit (or upload a photo of one) and watch the models read it."""

import time

import numpy as np
import streamlit as st

import ui
from digits import figures, handwriting, preprocess, store
from digits.errors import DigitsError, NoDigitFound

CANVAS_PIXELS = 280
CANVAS_KEY = "draw-canvas"  # plus the number of clears: a new key empties it
CLEARS_KEY = "draw-clears"
STEP_PIXELS = 112  # displayed side of each preprocessing step
STEPS = {
    "raw": "Raw",
    "cropped": "Cropped to the ink",
    "scaled": "Scaled to fit 20x20",
    "centred": "Centred by mass, 28x28",
}
SAVE_LABEL_KEY = "draw-save-label"
SAVE_NOTICE_KEY = "draw-save-notice"
SAVE_LABELS = list(range(10))
HINT = "Draw a digit on the canvas (or upload a photo) to see what the models read."


def default_models(runs) -> list[str]:
    """For the CNN and the MLP each, the shipped model, else the newest (``runs``
    are newest first); with neither, the newest two."""
    chosen = [store.preferred(runs, kind) for kind in ("cnn", "mlp")]
    return [r.name for r in chosen if r is not None] or [r.name for r in runs[:2]]


def clear() -> None:
    st.session_state[CLEARS_KEY] = st.session_state.get(CLEARS_KEY, 0) + 1


def digit_input() -> tuple[object, str | None]:
    """The canvas or the uploader: (RGBA array or file bytes or None, file name)."""
    source = st.segmented_control(
        "Input",
        ["Draw", "Upload"],
        default="Draw",
        required=True,
        key="draw-source",
        persist_state="session",
    )
    if source == "Upload":
        upload = st.file_uploader(
            "A photo or scan of one digit (PNG or JPEG)",
            type=["png", "jpg", "jpeg"],
            max_upload_size=ui.PHOTO_LIMIT_MB,
        )
        if upload is None:
            return None, None
        try:  # read from memory: an uploaded photo is never written to disk
            return ui.upload_bytes(upload, ui.PHOTO_LIMIT_MB), upload.name
        except DigitsError as err:
            ui.show_error(err)
            return None, None
    # Importable only inside a running Streamlit app: it registers its component.
    from streamlit_drawable_canvas import st_canvas

    brush = st.slider(
        "Brush width", 6, 40, 20, key="draw-brush", persist_state="session"
    )
    result = st_canvas(
        stroke_width=brush,
        stroke_color="#FFFFFF",
        background_color="#000000",
        height=CANVAS_PIXELS,
        width=CANVAS_PIXELS,
        drawing_mode="freedraw",
        update_streamlit=True,
        return_image_data=True,
        key=f"{CANVAS_KEY}-{st.session_state.get(CLEARS_KEY, 0)}",
    )
    st.button("Clear", icon=":material/delete:", on_click=clear)
    return result.image_data, None


def show_steps(pre: preprocess.Preprocessed) -> None:
    st.caption("How the image becomes a model input, MNIST-style")
    st.image(
        [figures.thumbnail(getattr(pre, step), STEP_PIXELS) for step in STEPS],
        caption=list(STEPS.values()),
        width=STEP_PIXELS,
    )


def save_drawing(centred: np.ndarray, raw: np.ndarray, source: str) -> None:
    """Keep the drawing with the digit picked in the form (a button callback);
    the outcome waits in the session for the next run, and the canvas clears."""
    label = st.session_state.get(SAVE_LABEL_KEY)
    if label is None:
        ui.keep_notice(
            SAVE_NOTICE_KEY, "warning", "Pick the digit you meant before saving."
        )
        return
    try:
        hw = handwriting.HandwritingStore()
        drawing_id = hw.add(centred, int(label), source=source, raw=raw)
        total = hw.count()
    except DigitsError as err:
        ui.keep_notice(SAVE_NOTICE_KEY, "error", str(err))
        return
    ui.keep_notice(
        SAVE_NOTICE_KEY,
        "success",
        f"Saved #{drawing_id} as a {label} ({total} in your handwriting set). "
        "Evaluate → My handwriting tests the models on them.",
    )
    st.session_state[SAVE_LABEL_KEY] = None
    clear()


def save_form(image, inputs: dict, filename: str | None) -> None:
    """Label the drawing and keep it in the "my handwriting" test set."""
    pre = inputs.get(handwriting.SIDE)
    if pre is None:  # only 8x8 models chosen: the store keeps MNIST's 28x28
        try:
            pre = preprocess.preprocess(image, handwriting.SIDE, name=filename)
        except DigitsError as err:
            ui.show_error(err)
            return
    with st.form("draw-save"):
        st.pills("The digit you meant", SAVE_LABELS, key=SAVE_LABEL_KEY)
        st.form_submit_button(
            "Save to my handwriting",
            icon=":material/save:",
            on_click=save_drawing,
            args=(pre.centred, pre.raw, "uploaded" if filename else "drawn"),
        )
        st.caption(
            "Keeps the 28x28 image with its true digit (`digits.handwriting`), to "
            "test any model on your own handwriting under Evaluate."
        )


ui.page_header(
    "Draw",
    "Draw a digit and see what each model reads, with every step of the "
    "preprocessing: predictions update after each stroke.",
)
runs = ui.digit_runs()
if not runs:
    st.info("No digit model is saved yet. Train one on the Train page.")
    st.stop()
chosen = ui.pick_runs(
    "Models", runs, default_models(runs), "draw-models", persist_state="session"
)

left, right = st.columns([1, 2], gap="large")
with left:
    image, filename = digit_input()
    ui.show_notice(SAVE_NOTICE_KEY)
with right:
    if image is None:
        st.info(HINT, icon=":material/draw:")
    elif not chosen:
        st.info("Choose at least one model above.")
    else:
        try:
            models = [ui.load_model(run) for run in chosen]
            start = time.perf_counter()
            # One preprocessing per input size (28 for MNIST, 8 for sklearn digits).
            inputs = {
                size: preprocess.preprocess(image, size, name=filename)
                for size in {run.image_shape[0] for run in chosen}
            }
            prepared = time.perf_counter()
            probas = [
                ui.predict_one(
                    model, inputs[run.image_shape[0]].image, len(run.class_names)
                )
                for run, model in zip(chosen, models, strict=True)
            ]
            done = time.perf_counter()
        except NoDigitFound:
            st.info(HINT, icon=":material/draw:")
        except DigitsError as err:
            ui.show_error(err)
        else:
            for col, run, p in zip(
                st.columns(len(chosen)), chosen, probas, strict=True
            ):
                with col:
                    st.metric(
                        "Prediction",
                        run.class_names[int(p.argmax())],
                        help=ui.run_label(run),
                    )
                    st.caption(f"**{run.name}** · {p.max():.1%} sure")
                    ui.chart(figures.probability_bars(p, run.class_names))
            shown = inputs.get(handwriting.SIDE) or next(iter(inputs.values()))
            show_steps(shown)
            st.session_state[ui.DRAWING_KEY] = shown.image  # for the Inspect page
            st.page_link(
                "pages/inspect.py",
                label="Inspect this digit",
                icon=":material/biotech:",
            )
            st.caption(
                f"Server time: preprocessing {1e3 * (prepared - start):.0f} ms, "
                f"{len(chosen)} models {1e3 * (done - prepared):.0f} ms."
            )
            save_form(image, inputs, filename)
