"""Draw: draw a digit (or upload a photo of one) and watch the models read it."""

import time

import numpy as np
import streamlit as st

import ui
from digits import data, explain, figures, handwriting, preprocess, store, sure, teach
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
LAYERS_MODEL_KEY = "draw-layers-model"  # whose layers the strips show
INSIDE_KEY = "draw-inside"  # whether the layers are shown at all
STRIP_KEY = "draw-strip-"  # plus the run's and the layer's names
# What a strip shows, in words, by the layer's type (its code name goes in the
# expander); {n} is the number of maps or units.
STRIP_WORDS = {
    "Conv2D": "{n} filters slid over {what} (a **convolution**): each map shows "
    "where one filter's pattern is (red) or its opposite (blue).",
    "ReLU": "What the layer passes on{pooled}, negatives set to 0 (**ReLU**).",
    "Tanh": "What the layer passes on{pooled}, squashed into -1..1 (**tanh**).",
    "Sigmoid": "What the layer passes on{pooled}, squashed into 0..1 (**sigmoid**).",
    "MaxPool2D": "Each map halved, keeping the largest of every 2x2 square (**max "
    "pooling**).",
    "Dense": "{n} numbers, each a weighted sum of all the layer before.",
}
POOLED = " (each map halved, keeping the largest of every 2x2 square: max pooling)"
HIDDEN_WORDS = "A hidden layer of {n} units: what it passes on. Bright: active."
SCORES_WORDS = (
    "The score of each digit, before the scores become probabilities (red: "
    "high, blue: low). Highest here: **{best}**."
)


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


def strip_words(out: explain.LayerOutput, before, last: bool, what: str) -> str:
    """The sentence above a strip, for learners."""
    n = out.shape[-1] if out.values.ndim == 3 else out.shape[0]
    if last:
        return SCORES_WORDS
    if out.values.ndim == 1 and out.kind != "Dense":
        return HIDDEN_WORDS.format(n=n)
    shrunk = (
        before is not None
        and before.values.ndim == 3
        and out.shape[0] < before.shape[0]
    )
    if before is not None:
        what = "the maps before it"
    return STRIP_WORDS.get(out.kind, "{n} numbers.").format(
        n=n, what=what, pooled=POOLED if shrunk else ""
    )


def show_layers(run, model, image: np.ndarray, what: str) -> list:
    """One strip per layer of ``model`` reading ``image`` (h, w), each one picture
    (``figures.strip_image``: pictures keep each stroke quick, where a chart per
    layer doubled the time a stroke takes). Returns the layers shown
    (``explain.LayerOutput``)."""
    strips = explain.layer_strips(model, image)
    if not strips:
        st.info(f"The layers of {run.name} cannot be reached from here.")
        return strips
    before = None
    for i, out in enumerate(strips):
        last = i == len(strips) - 1
        words = strip_words(out, before, last, what)
        if last:
            words = words.format(best=run.class_names[int(out.values.argmax())])
        with st.container(key=f"{STRIP_KEY}{run.name}-{out.name}", gap="small"):
            st.caption(f"**{out.name}** · {'x'.join(map(str, out.shape))} · " + words)
            # One width for all (their own widths differ by the maps' sizes).
            st.image(
                figures.strip_image(out.values, run.class_names),
                width=figures.STRIP_WIDTH,
            )
        before = out
    if explain.network(model) is None:
        st.caption(
            "This is the scikit-learn MLP: its hidden layers are worked out here "
            "from its weights."
        )
    ui.how_computed(
        "digits.explain.layer_strips",
        "digits.explain.activations",
        "digits.explain.mlp_layers",
        "digits.figures.strip_image",
        note="activations runs the network layer by layer in inference mode and "
        "keeps each output; layer_strips keeps each conv layer and the output of "
        "each stage (flatten and dropout change nothing at inference).",
    )
    return strips


def inside_section(chosen: list, models: list, inputs: dict, what: str) -> None:
    """Inside one chosen model (picked here when there are several): its layers
    for the drawing, and one pixel of a feature map worked out by hand."""
    start = time.perf_counter()
    st.subheader("Inside the network")
    # On by default: each layer is one picture, cheap for the browser to draw
    # (a Plotly chart per layer doubled the time per stroke).
    if not st.toggle(
        "Show each layer for this drawing",
        value=True,
        key=INSIDE_KEY,
        persist_state="session",
        help="Turn it off to see only the predictions.",
    ):
        st.caption(
            "Turn this on to see what each layer of the network makes of "
            f"{what}, updated after every stroke."
        )
        return
    names = [run.name for run in chosen]
    name = names[0]
    if len(names) > 1:
        name = st.segmented_control(
            "Whose layers",
            names,
            default=names[0],
            required=True,
            key=LAYERS_MODEL_KEY,
        )
        name = name if name in names else names[0]
    at = names.index(name)
    run, model = chosen[at], models[at]
    image = inputs[run.image_shape[0]].image
    st.caption(
        f"What each layer of **{run.name}** makes of {what}, from the input "
        "(top) to the answer (bottom). Draw a 1, then a 7, and watch which maps "
        "light up."
    )
    strips = show_layers(run, model, image, what)
    took = time.perf_counter() - start
    st.caption(f"Layers worked out on the server in {1e3 * took:.0f} ms.")
    if explain.network(model) is not None and explain.capabilities(model)["filters"]:
        st.markdown("**What one pixel computes**")
        st.caption(
            "Pick a map of a layer above: it shows enlarged, and a click on one of "
            "its pixels works out that pixel, number by number."
        )
        ui.conv_pixel_section("draw", run, model, image, strips, what)


def show_predictions(image, filename: str | None, chosen: list) -> tuple | None:
    """Each chosen model's reading of ``image`` (an RGBA drawing or photo bytes),
    the preprocessing steps, the way to Inspect and the form that saves it.
    Returns (models, inputs by size) for the layers below, or None."""
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
        return None
    except DigitsError as err:
        ui.show_error(err)
        return None
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
    return models, inputs


# -- teaching a copy: one step on the drawing, and "teach it my handwriting" --------

TEACH_MODEL_KEY = "draw-teach-model"  # which chosen model the section teaches
TEACH_LABEL_KEY = "draw-teach-label"
TEACH_RATE_KEY = "draw-teach-rate"
STEP_KEY = "draw-step"  # the last step: ((run, label, rate, drawing), teach.Step)
TAUGHT_KEY = "draw-taught"  # the last fine-tuned copy: (run, drawings, FineTune)
TAUGHT_NOTICE_KEY = "draw-taught-notice"
TAUGHT_NAME_KEY = "draw-taught-name"
STEP_RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
GRADIENT_STRIP = "draw-gradient-"  # plus the run's and the layer's names
MNIST = "mnist"  # the saved drawings are MNIST-style: taught models must be too
CLASS_CHART_WIDTH = 720  # ten classes' bars read best no wider than this


def gradient_words(out: explain.LayerOutput, last: bool) -> str:
    """The sentence above one layer's gradient, for learners."""
    if last:
        return (
            "The scores of the ten digits. Here the gradient is simply each "
            "probability, minus 1 for the digit you picked: only that digit's "
            "score is pushed up (blue)."
        )
    if out.kind == "Conv2D":
        return (
            f"The {out.shape[-1]} maps the filters make: which pixels of each map "
            "should have been brighter (blue) or darker (red)."
        )
    if out.values.ndim == 3:
        return "What the block passes on, map by map (after pooling and ReLU)."
    return f"What the {out.shape[0]} units of the hidden layer pass on."


def step_key(run, label: int, rate: float, image: np.ndarray) -> tuple:
    """What a step was taken on: a new drawing, label or rate makes it old."""
    return (run.name, label, rate, hash(image.tobytes()))


def show_step(run, step: teach.Step) -> None:
    """The probabilities and loss before and after a step, and the gradient
    that arrived at each layer."""
    names = run.class_names
    picked = names[step.label]
    ui.metric_row(
        ("Loss before", f"{step.loss_before:.3f}"),
        ("Loss after", f"{step.loss_after:.3f}"),
        (
            f"Probability of {picked}",
            f"{step.proba_before[step.label]:.1%} → {step.proba_after[step.label]:.1%}",
        ),
    )
    if step.loss_after > step.loss_before:
        st.warning(
            "This step overshot: the loss went up. A step this large jumps past "
            "the better weights; try a smaller step size.",
            icon=":material/trending_up:",
        )
    ui.chart(
        figures.probabilities_moved(
            step.proba_before, step.proba_after, names, step.label
        ),
        f"The probability of each digit for your drawing, before (grey) and after "
        f"(red) one step of learning that it is a {picked}, in a copy of "
        f"**{run.name}**. One drawing alone can swing the answer far: in training, "
        "each step follows the gradient averaged over a batch of images, so that "
        "no single image pulls this hard.",
        key=f"draw-step-moved-{run.name}",
        width=CLASS_CHART_WIDTH,
    )
    st.markdown("**The gradient arriving at each layer**, from the answer back")
    st.caption(
        "For each number a layer passes on, the gradient says how much the loss "
        "would grow if that number grew: red, the step pushes it down; blue, "
        "the step pushes it up; white, it hardly matters for this digit. Each "
        "layer has its own colour scale."
    )
    shown = step.gradients[::-1]
    for i, out in enumerate(shown):
        st.caption(
            f"**{out.name}** · {'x'.join(map(str, out.shape))} · "
            + gradient_words(out, last=i == 0)
        )
        ui.chart(
            figures.layer_gradient(out.values, names),
            key=f"{GRADIENT_STRIP}{run.name}-{out.name}",
            width=CLASS_CHART_WIDTH if i == 0 else "stretch",
        )
    changes = ", ".join(f"{name} {change:.2%}" for name, change in step.weight_steps)
    st.caption(
        f"How much the step changed each layer's weights (the size of the change "
        f"against the size of the weights): {changes}. Computed in "
        f"{1e3 * step.seconds:.0f} ms."
    )
    ui.how_computed(
        "digits.teach.one_step",
        "digits.teach.backprop",
        "digits.nn.optimizers.SGD",
        note="backprop runs the drawing forward with dropout off, takes the "
        "cross-entropy of the digit picked, and runs every layer's backward, "
        "keeping dL/d(output) of each; one_step then takes one SGD step on a copy "
        "of the model. The scikit-learn MLP's weights become Dense layers of "
        "digits.nn for this.",
    )


def step_section(run, model, image: np.ndarray) -> None:
    """One step of learning on the drawing, with the digit the learner picks
    (under the section's heading)."""
    reason = teach.unsupported(model)
    if reason is not None:
        st.info(f"{run.name} cannot learn here. {reason}")
        return
    st.caption(
        "Tell the model which digit you meant. It measures how wrong its answer "
        "is (the **loss**), works backwards from the answer through each layer to "
        "find which way every weight should move to lower it (**backpropagation**, "
        "which gives the **gradient**), and takes one step that way. This happens "
        "in a copy: the model itself does not change."
    )
    if st.session_state.get(TEACH_LABEL_KEY) is None:
        # The digit entered to save the drawing, if any; else the learner picks.
        st.session_state[TEACH_LABEL_KEY] = st.session_state.get(SAVE_LABEL_KEY)
    label = st.pills("The digit it should be", SAVE_LABELS, key=TEACH_LABEL_KEY)
    rate = st.select_slider(
        "Step size",
        STEP_RATES,
        value=teach.STEP_RATE,
        key=TEACH_RATE_KEY,
        width=360,
        help="The learning rate: how far the weights move along the gradient. "
        "Too large a step can overshoot and make the loss worse.",
    )
    if st.button(
        "Take one step",
        icon=":material/footprint:",
        disabled=label is None,
        help="Pick the digit it should be first." if label is None else None,
    ):
        try:
            step = teach.one_step(model, image, int(label), rate)
        except DigitsError as err:
            ui.show_error(err)
            return
        st.session_state[STEP_KEY] = (step_key(run, label, rate, image), step)
    kept = st.session_state.get(STEP_KEY)
    if label is not None and kept and kept[0] == step_key(run, label, rate, image):
        show_step(run, kept[1])
    elif label is None:
        st.caption("Pick the digit the drawing should be, then take the step.")


def save_taught(run, taught: teach.FineTune) -> None:
    """Save the fine-tuned copy as a new run (a button callback)."""
    try:
        saved = teach.save_taught(
            taught,
            run,
            data.load_dataset(MNIST),
            name=st.session_state.get(TAUGHT_NAME_KEY) or None,
        )
    except DigitsError as err:
        ui.keep_notice(TAUGHT_NOTICE_KEY, "error", str(err))
        return
    ui.keep_notice(
        TAUGHT_NOTICE_KEY,
        "success",
        f"Saved as **{saved.name}** (MNIST test accuracy {saved.test_accuracy:.2%}): "
        "choose it under Models above, or on Evaluate.",
    )


def show_taught(run, taught: teach.FineTune, n_saved: int) -> None:
    """The taught copy's scores before and after, and the way to keep it."""
    ui.metric_row(
        (
            "Your drawings kept aside",
            f"{taught.held_before:.0%} → {taught.held_after:.0%}",
            "Accuracy on the drawings the copy never learned from.",
        ),
        (
            "MNIST test digits",
            f"{taught.test_before:.2%} → {taught.test_after:.2%}",
            "Accuracy on MNIST's test digits, before and after.",
        ),
    )
    st.caption(
        f"Learned from {len(taught.learned)} of your {n_saved} saved drawings, "
        f"mixed with MNIST training digits so that it does not forget them (new "
        f"ones each pass, {len(taught.replay):,} in all), over {taught.epochs} "
        f"passes ({taught.seconds:.1f} s). "
        f"Scored on the other {len(taught.held_out)} drawings, kept aside (the "
        f"same ones every time), and on {taught.n_test:,} MNIST test digits."
    )
    with st.container(horizontal=True, vertical_alignment="bottom", wrap=True):
        st.text_input(
            "Name of the new run",
            value=f"{run.name}-my-handwriting",
            key=TAUGHT_NAME_KEY,
            width=320,
        )
        st.button(
            "Save as a new run",
            icon=":material/save:",
            on_click=save_taught,
            args=(run, taught),
        )


def handwriting_section(run, model) -> None:
    """Fine-tune a copy of the model on the saved drawings, and score it."""
    st.subheader("Teach it my handwriting")
    ui.show_notice(TAUGHT_NOTICE_KEY)
    reason = teach.unsupported(model)
    if (run.meta.get("dataset") or {}).get("name") != MNIST:
        reason = "It was not trained on MNIST, whose 28x28 style your drawings have."
    if reason is not None:
        st.info(f"{run.name} cannot be taught here. {reason}")
        return
    st.caption(
        f"A copy of **{run.name}** learns from most of the drawings you saved with "
        "'Save to my handwriting' (at least "
        f"{teach.MIN_DRAWINGS}), then is tested on the rest, which it never saw: "
        "did it learn your style, or only those drawings?"
    )
    # The store is read only when asked: not on every stroke.
    if st.button(f"Teach a copy of {run.name}", icon=":material/school:"):
        saved = ui.saved_drawings(handwriting.HandwritingStore())
        if len(saved.labels) < teach.MIN_DRAWINGS:
            st.info(teach.too_few(len(saved.labels)), icon=":material/draw:")
            return
        bar = st.progress(0.0, text="Starting")
        try:
            taught = teach.fine_tune(
                model,
                saved.images,
                saved.labels,
                saved.ids,
                data.load_dataset(MNIST),
                progress=lambda done, text: bar.progress(done, text=text),
                already_learned=teach.taught_on(run),
            )
        except DigitsError as err:
            ui.show_error(err)
            return
        finally:
            bar.empty()
        st.session_state[TAUGHT_KEY] = (run.name, len(saved.labels), taught)
    kept = st.session_state.get(TAUGHT_KEY)
    if kept and kept[0] == run.name:
        show_taught(run, kept[2], kept[1])
    ui.how_computed(
        "digits.teach.fine_tune",
        "digits.teach.split_drawings",
        "digits.teach.save_taught",
        note=f"The drawings are split once ({teach.HELD_OUT_FRACTION:.0%} kept "
        "aside, stratified by digit when the counts allow, fixed seed). Each pass "
        f"mixes the rest with {teach.REPLAY_PER_DRAWING} new MNIST training "
        f"images per drawing (at least {teach.REPLAY_MIN}), never validation or "
        f"test images; Adam at {teach.FINE_TUNE_RATE:g}, batches of "
        f"{teach.FINE_TUNE_BATCH}, {teach.FINE_TUNE_EPOCHS} passes.",
    )


def teach_section(chosen: list, models: list, inputs: dict) -> None:
    """Teaching a copy of one chosen model (picked here when there are several):
    one step on the drawing, and fine-tuning on the saved drawings."""
    names = [run.name for run in chosen]
    name = names[0]
    st.divider()
    st.subheader("One step of learning on your digit")
    if len(names) > 1:
        name = st.segmented_control(
            "Which model learns",
            names,
            default=names[0],
            required=True,
            key=TEACH_MODEL_KEY,
        )
        name = name if name in names else names[0]
    at = names.index(name)
    run, model = chosen[at], models[at]
    step_section(run, model, inputs[run.image_shape[0]].image)
    handwriting_section(run, model)


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
read = None  # (models, inputs) once the models have read the drawing
with right:
    chosen = ui.pick_runs(
        "Models", runs, default_models(runs), "draw-models", persist_state="session"
    )
    if image is None:
        st.info(HINT, icon=":material/draw:")
    elif not chosen:
        st.info("Choose at least one model above.")
    else:
        read = show_predictions(image, filename, chosen)
# Below the drawing and its predictions, the whole width: the layers' strips need
# it (beside the canvas at 1024 px there are only about 300 px).
if read is not None:
    inside_section(chosen, *read, "your photo" if filename else "your digit")
    teach_section(chosen, *read)
