"""Words for learners (issue 17, item 8): the text on every page says what a thing
means in plain words; code names (``explain.sweep``, ``digits.metrics.selective``)
appear only inside the collapsed "How this is computed" expanders.

Two checks: every page (and each tab or state that draws other text) is opened in
AppTest and every caption, markdown, info box, label and help text outside those
expanders is read; and, for the texts a test cannot easily reach (a training
job's live view, a sweep's results), the string literals of the pages' source.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

from digits import experiments, handwriting, store
from tests import test_app
from tests.test_app import canvas_drawing, page

# The same fixtures as the other page tests: tiny MNIST models, a fresh AppTest.
runs_dir = test_app.runs_dir
at = test_app.at

HOW = "How this is computed"
ROOT = Path(__file__).resolve().parents[1]
PAGE_FILES = [ROOT / "app.py", ROOT / "ui.py", *sorted((ROOT / "pages").glob("*.py"))]
# A code name: a backticked dotted name (`explain.sweep`, `np.load(...)`), a
# module of digits named in plain text (digits.metrics, explain.probe), or a
# count typed as on a command line ("e.g. 32,64").
CODE_NAME = re.compile(
    r"`[^`\n]*\b[A-Za-z_]\w*\.[A-Za-z_]\w*[^`\n]*`"
    r"|\b(?:digits|explain|metrics|figures|handwriting|store|ui|np)\.[a-z_]"
    r"|e\.g\. *\d+ *, *\d+"
)
TEXT_FIELDS = ("body", "label", "help", "caption", "placeholder")


def texts_of(node) -> list[str]:
    """The words an element shows: its body, label, help, caption..."""
    proto = node.proto
    fields = getattr(proto, "DESCRIPTOR", None)
    if fields is None:
        return []
    names = fields.fields_by_name
    found = [getattr(proto, f) for f in TEXT_FIELDS if f in names]
    if "imgs" in names:  # st.image: one caption per image
        found += [img.caption for img in proto.imgs]
    return [text for text in found if isinstance(text, str) and text]


def walk(node, where: str = "page"):
    """(where, text) for every text on the page: ``where`` is "page", or the
    label of the expander it sits in (the innermost)."""
    if isinstance(node, Block):
        if node.type == "expander":
            where = node.label
            yield where, node.label
        elif getattr(node, "label", None):  # a tab
            yield where, node.label
        for child in node.children.values():
            yield from walk(child, where)
    else:
        for text in texts_of(node):
            yield where, text


def code_names(at: AppTest) -> list[tuple[str, str]]:
    """The texts outside "How this is computed" that contain a code name."""
    assert not at.exception, [e.message for e in at.exception]
    return [
        (where, text)
        for where, text in walk(at._tree)
        if where != HOW and CODE_NAME.search(text)
    ]


def test_the_pattern_finds_code_names_and_leaves_plain_words():
    for code in (
        "Pareto front (`experiments.pareto_front`).",
        "computed by digits.metrics.selective",
        "explain.sweep repeats that",
        "Channels of each block, e.g. 32,64.",
        "a `.npz` file (`np.load(..., allow_pickle=False)`)",
    ):
        assert CODE_NAME.search(code), code
    for plain in (
        "How sure the model is, e.g. 90%.",
        "On the 10,000 test images.",
        "Accuracy 99.4%. Loss 0.02.",
        "A file that NumPy reads (.npz), or a CSV.",
    ):
        assert not CODE_NAME.search(plain), plain


def test_the_check_fails_on_a_caption_with_a_code_name(tmp_path):
    script = tmp_path / "page.py"
    script.write_text(
        "import streamlit as st\n"
        "st.caption('Accuracy against coverage (`digits.metrics.coverage_curve`).')\n"
        f"with st.expander({HOW!r}):\n"
        "    st.caption('`digits.metrics.selective`')\n"
        "with st.expander('Details'):\n"
        "    st.markdown('explain.sweep')\n"
    )
    app = AppTest.from_file(str(script)).run()
    assert code_names(app) == [
        ("page", "Accuracy against coverage (`digits.metrics.coverage_curve`)."),
        ("Details", "explain.sweep"),
    ]


@pytest.fixture
def no_drawings(tmp_path, monkeypatch) -> handwriting.HandwritingStore:
    monkeypatch.setenv(handwriting.DB_ENV, str(tmp_path / "handwriting.sqlite"))
    return handwriting.HandwritingStore()


@pytest.mark.parametrize("name", ["train", "experiments"])
def test_train_and_experiments_speak_plainly(at, name):
    assert code_names(page(at, name)) == []


def test_home_speaks_plainly(at):
    assert code_names(at) == []


EVALUATE_TABS = (
    "Confusion matrix",
    "Misclassified images",
    "Compare two models",
    "Calibration",
    "My handwriting",
    "Training curves",
)


def test_every_evaluate_tab_speaks_plainly(at, no_drawings, mnist):
    page(at, "evaluate")
    at.selectbox(key="evaluate-model").select("tiny-cnn").run()
    for i in range(20):  # drawings, so that My handwriting shows its scores
        no_drawings.add(mnist.x_test[i], int(mnist.y_test[i]))
    found = {}
    for tab in EVALUATE_TABS:
        at.session_state["evaluate-tab"] = tab
        at.run()
        found[tab] = code_names(at)
    assert found == {tab: [] for tab in EVALUATE_TABS}


def test_draw_and_inspect_speak_plainly(at, no_drawings):
    page(at, "draw")
    at.multiselect(key="draw-models").set_value(["tiny-cnn", "tiny-mlp"]).run()
    at.session_state["draw-canvas-0"] = canvas_drawing([[(140, 40), (140, 240)]], 24)
    at.run()
    assert [m for m in at.metric if m.label == "Prediction"]
    assert code_names(at) == []
    page(at, "inspect")
    at.selectbox(key="inspect-model").select("tiny-cnn").run()
    next(b for b in at.button if b.label == "Run the gradient check").click().run()
    assert at.dataframe, "the gradient check's table"
    assert code_names(at) == []


def test_a_sweeps_results_speak_plainly(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    sweep = experiments.plan(
        "cnn",
        {"conv_channels": [()], "hidden_layer_sizes": [(8,), (16,)]},
        dataset="mnist",
        seeds=(0,),
        train_size=300,
        params={"max_iter": 1},
        name="words-sweep",
    )
    experiments.run_sweep(sweep, mnist, n_jobs=1)
    app = AppTest.from_file(test_app.APP, default_timeout=test_app.TIMEOUT).run()
    page(app, "experiments")
    assert app.get("plotly_chart"), "the sweep's charts"
    assert code_names(app) == []
    # The function names are there, folded away.
    hidden = [text for where, text in walk(app._tree) if where == HOW]
    assert any("digits.experiments.pareto_front" in text for text in hidden)


def literals(tree: ast.AST):
    """(line, text) of each string a page shows: every string literal (the
    constant parts of f-strings too) except docstrings and the arguments of
    ``how_computed``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))  # a docstring
        if isinstance(node, ast.Call):
            func = node.func
            name = getattr(func, "attr", getattr(func, "id", ""))
            if name == "how_computed":
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    skip.update(id(n) for n in ast.walk(arg))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
        ):
            yield node.lineno, node.value


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda p: p.name)
def test_no_page_source_puts_a_code_name_in_its_text(path):
    """Also the texts no test above draws (a live training job, sweep results)."""
    tree = ast.parse(path.read_text())
    found = [(line, text) for line, text in literals(tree) if CODE_NAME.search(text)]
    assert found == []


def test_the_source_check_finds_a_caption_with_a_code_name():
    tree = ast.parse(
        '"""Docstring: ``digits.explain``."""\n'
        "st.caption('Saliency (`explain.saliency`).')\n"
        "ui.how_computed('explain.occlusion', note='`explain.occlusion` blanks')\n"
    )
    assert [t for _, t in literals(tree) if CODE_NAME.search(t)] == [
        "Saliency (`explain.saliency`)."
    ]
