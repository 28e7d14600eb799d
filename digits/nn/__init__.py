"""A small neural-network library in NumPy: layers, loss, optimizers, training loop.

Read it in this order: ``layers.py`` (each forward beside its backward),
``losses.py``, ``optimizers.py``, ``model.py``, ``training.py`` (the loop),
``callbacks.py``; then ``gradcheck.py``, which checks every backward against finite
differences.

It is the lesson: plain NumPy, one batch at a time. ``digits.engine`` trains the same
networks faster (two halves of each batch at once, flat buffers, a second process);
it imports this package, never the other way round.
"""

from digits.nn.callbacks import Callback, EarlyStopping, History, StopOnEvent
from digits.nn.layers import (
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)
from digits.nn.losses import softmax, softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import SGD, Adam

__all__ = [
    "SGD",
    "Adam",
    "Callback",
    "Conv2D",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "Flatten",
    "History",
    "MaxPool2D",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "StopOnEvent",
    "Tanh",
    "softmax",
    "softmax_cross_entropy",
]
