"""Draw: draw a digit (or upload a photo of one) and watch the models read it."""

import time

import numpy as np
import streamlit as st

import ui
from digits import figures, handwriting, preprocess, store, sure
from digits.errors import DigitsError, NoDigitFound

# 9 canvas pixels per pixel of a 28x28 MNIST image. The canvas has a fixed size:
# at 1024x768 with the sidebar open the page has 564 px for its two columns, and
# this leaves the predictions beside it about 300 px.
CANVAS_PIXELS = 252
BRUSH_DEFAULT = 18
CANVAS_KEY = "draw-canvas"  # plus the number of clears: a new key empties it
CLEARS_KEY = "draw-clears"
# The canvas's last drawing, {"json": fabric.js JSON, "image": RGBA array}, kept
# for the session: coming back to Draw puts it back on the canvas.
DRAWN_KEY = "draw-drawing"
# The drawing the canvas on screen was opened with. It must not change while the
# canvas stays on screen: the canvas redraws itself (and sends its drawing back,
# rerunning the page) whenever its initial drawing changes.
OPENED_KEY = "draw-opened"
UPLOAD_KEY = "draw-upload"
PHOTO_KEY = "draw-photo"  # the last uploaded photo (bytes, file name), in memory
STEP_PIXELS = 112  # displayed side of each preprocessing step
STEPS = {
    "raw": "Raw",
    "cropped": "Cropped to the ink",
    "scaled": "Scaled to fit 20x20",
    "centred": "Centred by mass, 28x28",
}
# Models side by side: beside the canvas at 1024 px wide there is room for two
# (about 140 px each, enough for "Prediction" and its bars); more take a new row.
MODELS_PER_ROW = 2
SAVE_LABEL_KEY = "draw-save-label"
SAVE_NOTICE_KEY = "draw-save-notice"
SAVE_LABELS = list(range(10))
NOT_SURE = "Not sure"  # shown instead of a digit when `digits.sure` doubts it
HINT = "Draw a digit on the canvas (or upload a photo) to see what the models read."


def default_models(runs) -> list[str]:
    """For the CNN and the MLP each, the shipped model, else the newest (``runs``
    are newest first); with neither, the newest two."""
    chosen = [store.preferred(runs, kind) for kind in ("cnn", "mlp")]
    return [r.name for r in chosen if r is not None] or [r.name for r in runs[:2]]


def clear() -> None:
    """Empty the canvas (a new one) and forget the drawing kept for the session."""
    st.session_state[CLEARS_KEY] = st.session_state.get(CLEARS_KEY, 0) + 1
    st.session_state.pop(DRAWN_KEY, None)


def forget_photo() -> None:
    """Forget the kept photo: the uploader's file was removed (or Remove pressed)."""
    if st.session_state.get(UPLOAD_KEY) is None:
        st.session_state.pop(PHOTO_KEY, None)


def photo_input() -> tuple[bytes | None, str | None]:
    """The uploaded photo (bytes, file name), or the one uploaded before leaving
    the page: the uploader comes back empty, the photo is kept in memory."""
    upload = st.file_uploader(
        "A photo or scan of one digit (PNG or JPEG)",
        type=["png", "jpg", "jpeg"],
        max_upload_size=ui.PHOTO_LIMIT_MB,
        key=UPLOAD_KEY,
        on_change=forget_photo,
    )
    if upload is not None:
        try:  # read from memory: an uploaded photo is never written to disk
            st.session_state[PHOTO_KEY] = (
                ui.upload_bytes(upload, ui.PHOTO_LIMIT_MB),
                upload.name,
            )
        except DigitsError as err:
            ui.show_error(err)
            return None, None
    elif PHOTO_KEY in st.session_state:
        st.caption(f"Showing **{st.session_state[PHOTO_KEY][1]}**, uploaded before.")
        st.button("Remove it", icon=":material/close:", on_click=forget_photo)
    return st.session_state.get(PHOTO_KEY, (None, None))


def canvas_input() -> np.ndarray | None:
    """The drawing canvas, with the session's last drawing back on it; returns the
    drawing as an RGBA array (h, w, 4), or None before anything is drawn."""
    # Importable only inside a running Streamlit app: it registers its component.
    from streamlit_drawable_canvas import st_canvas

    key = f"{CANVAS_KEY}-{st.session_state.get(CLEARS_KEY, 0)}"
    if key not in st.session_state:  # a new canvas: this visit's first, or cleared
        kept = st.session_state.get(DRAWN_KEY)
        st.session_state[OPENED_KEY] = kept["json"] if kept else None
    result = st_canvas(
        stroke_width=st.session_state.get("draw-brush", BRUSH_DEFAULT),
        stroke_color="#FFFFFF",
        background_color="#000000",
        height=CANVAS_PIXELS,
        width=CANVAS_PIXELS,
        drawing_mode="freedraw",
        initial_drawing=st.session_state[OPENED_KEY],
        update_streamlit=True,
        return_image_data=True,
        key=key,
    )
    # Until the canvas sends a drawing, it shows the one it was opened with.
    if result.image_data is not None:
        st.session_state[DRAWN_KEY] = {
            "json": result.json_data,
            "image": result.image_data,
        }
    kept = st.session_state.get(DRAWN_KEY)
    return kept["image"] if kept else None


def digit_input() -> tuple[object, str | None]:
    """The canvas or the uploader: (RGBA array or file bytes or None, file name).

    The brush slider and Clear sit below the canvas, so that the canvas lies
    high enough on the page to show whole in a 768-pixel-high window."""
    source = st.segmented_control(
        "Input",
        ["Draw", "Upload"],
        default="Draw",
        required=True,
        key="draw-source",
        persist_state="session",
    )
    if source == "Upload":
        return photo_input()
    image = canvas_input()
    st.slider(
        "Brush width",
        6,
        40,
        BRUSH_DEFAULT,
        key="draw-brush",
        persist_state="session",
        help="How thick your strokes are, in canvas pixels.",
    )
    st.button("Clear", icon=":material/delete:", on_click=clear)
    return image, None


def show_steps(pre: preprocess.Preprocessed) -> None:
    st.caption(
        "How your digit becomes a model input, the way MNIST's digits were made: "
        "cropped to the ink, scaled to fit 20x20 pixels, then centred by its "
        "centre of mass in 28x28."
    )
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
            "Keeps the 28x28 image with the digit you meant, to test any model on "
            "your own handwriting under Evaluate."
        )


def open_inspect(run_name: str) -> None:
    """Make Inspect show the drawing with ``run_name`` (a button callback)."""
    st.session_state[ui.INSPECT_SOURCE_KEY] = ui.INSPECT_DRAWING
    st.session_state[ui.INSPECT_MODEL_KEY] = run_name


def show_predictions(image, filename: str | None, chosen: list) -> None:
    """Each chosen model's reading of ``image`` (an RGBA drawing or photo bytes),
    the preprocessing steps, the way to Inspect and the form that saves it."""
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
        doubts = [  # why each answer is not sure (empty: sure)
            sure.reasons(inputs[run.image_shape[0]].image, p, ui.sure_thresholds(run))
            for run, p in zip(chosen, probas, strict=True)
        ]
    except NoDigitFound:
        st.info(HINT, icon=":material/draw:")
        return
    except DigitsError as err:
        ui.show_error(err)
        return
    readings = list(zip(chosen, probas, doubts, strict=True))
    st.caption(
        "What each model reads in your "
        + ("photo" if filename else "drawing")
        + ": its answer, and its probability for every class (the bars). A model "
        "says **Not sure** when it hesitates, or when the picture does not look "
        "like the digits it learned from."
    )
    for first in range(0, len(readings), MODELS_PER_ROW):
        row = readings[first : first + MODELS_PER_ROW]
        for col, (run, p, doubt) in zip(st.columns(MODELS_PER_ROW), row, strict=False):
            with col:
                guess = run.class_names[int(p.argmax())]
                st.metric(
                    "Prediction",
                    NOT_SURE if doubt else guess,
                    help=ui.run_label(run),
                )
                if doubt:
                    st.caption(
                        f"**{run.name}** · Not sure: {'; '.join(doubt)}. "
                        f"Best guess: {guess}, {p.max():.1%}."
                    )
                else:
                    st.caption(f"**{run.name}** · {p.max():.1%} sure")
                ui.chart(figures.probability_bars(p, run.class_names))
    ui.how_computed(
        "digits.sure.thresholds_for",
        "digits.sure.reasons",
        note="Not sure: the top probability is below what 99.5% of the "
        "validation digits reach, or a second small network, trained to tell "
        "digits from dots, noise, scribbles and letters, says it is not a digit "
        "(it lets 99.5% of the validation digits through). For models of other "
        "images, simple ink checks take its place (how much ink, how solid, how "
        "many pieces, how many strokes side by side). The thresholds come from "
        "validation images, never test images.",
    )
    shown = inputs.get(handwriting.SIDE) or next(iter(inputs.values()))
    show_steps(shown)
    st.session_state[ui.DRAWING_KEY] = shown.image  # for the Inspect page
    if st.button(
        "Inspect this digit",
        icon=":material/biotech:",
        help=f"Look inside {chosen[0].name} as it reads this digit.",
        on_click=open_inspect,
        args=(chosen[0].name,),
    ):
        st.switch_page("pages/inspect.py")
    st.caption(
        f"Server time: preprocessing {1e3 * (prepared - start):.0f} ms, "
        f"{len(chosen)} models {1e3 * (done - prepared):.0f} ms."
    )
    save_form(image, inputs, filename)


ui.page_header(
    "Draw",
    "Draw a digit and see what each model reads, with every step of the "
    "preprocessing: predictions update after each stroke.",
)
runs = ui.digit_runs()
if not runs:
    st.info("No digit model is saved yet. Train one on the Train page.")
    st.stop()

# The drawing column is exactly as wide as the canvas, and the results take the
# rest: the canvas then fits its column at every window width from 1024 px up.
with st.container(horizontal=True, gap="medium", wrap=False):
    left = st.container(width=CANVAS_PIXELS)
    right = st.container()
with left:
    image, filename = digit_input()
    ui.show_notice(SAVE_NOTICE_KEY)
with right:
    chosen = ui.pick_runs(
        "Models", runs, default_models(runs), "draw-models", persist_state="session"
    )
    if image is None:
        st.info(HINT, icon=":material/draw:")
    elif not chosen:
        st.info("Choose at least one model above.")
    else:
        show_predictions(image, filename, chosen)
