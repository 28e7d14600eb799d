"""digits: train, inspect and try handwritten-digit classifiers.

The engine behind the dashboard. It never imports streamlit.
"""

__version__ = "0.1.0"
