"""The speed engine: how the lesson's network (``digits.nn``) is trained fast.

It imports ``digits.nn`` and is never imported by it. Read it in this order:

- ``trainer.py``: the lesson's ``Trainer``, with each batch in two halves at once
  and the optimizer step on flat arrays; and prediction in two threads;
- ``halves.py``: the two halves, and how they draw the plain loop's random numbers;
- ``flat.py``: every parameter in one flat array, and the optimizer step on slices;
- ``twin.py``: the second half in a second process, through shared memory;
- ``system.py``: BLAS threads and glibc's allocator.

``tests/test_engine.py`` checks that it trains the weights the plain loop trains.
"""
