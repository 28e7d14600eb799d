"""The dashboard's entry point: ``streamlit run app.py``. Only a router.

Each page lives in ``pages/``; shared Streamlit helpers are in ``ui.py``; all
model logic is in the ``digits`` package.
"""

import streamlit as st

st.set_page_config(page_title="digits", page_icon=":material/draw:", layout="wide")
st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
        st.Page("pages/draw.py", title="Draw", icon=":material/draw:"),
        st.Page("pages/inspect.py", title="Inspect", icon=":material/biotech:"),
        st.Page("pages/experiments.py", title="Experiments", icon=":material/science:"),
    ]
).run()
