"""The dashboard's entry point: ``streamlit run app.py`` or ``digits dashboard``.

A router, behind a guard. The server listens on 127.0.0.1 unless it was started
with a wider address on purpose (``.streamlit/config.toml`` beside this file, and
``digits.dashboard``'s launcher, see to that). If it is reachable from other
machines anyway (a ``STREAMLIT_SERVER_ADDRESS`` or a global config file left
over, a Streamlit that skips the config beside this script), sessions from other
machines get a short explanation and nothing else, unless serving the network
was asked for (``digits dashboard --host``, a ``--server.address`` flag or
``DIGITS_ALLOW_NETWORK=1``; see ``digits.dashboard.network_allowed``).

Each page lives in ``pages/``; shared Streamlit helpers are in ``ui.py``; all
model logic is in the ``digits`` package.
"""

import sys

import streamlit as st

from digits import dashboard


@st.cache_resource(show_spinner=False)
def _log_once(message: str) -> None:
    """Print ``message`` to the server's log the first time only."""
    print(message, file=sys.stderr, flush=True)


st.set_page_config(page_title="digits", page_icon=":material/draw:", layout="wide")

allowed = dashboard.network_allowed()
warning = dashboard.exposure_warning(st.get_option("server.address"), allowed)
if warning is not None:
    _log_once(warning)
client = st.context.ip_address
if dashboard.refuse_client(client, allowed):
    # The only page this session gets: no link or URL leads to another one.
    def refused() -> None:
        st.title("digits")
        st.error(dashboard.REFUSAL.format(client=client), icon=":material/block:")

    st.navigation([st.Page(refused, title="digits")], position="hidden").run()
    st.stop()

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
