"""The speed engine: how the lesson's network (``digits.nn``) is trained fast.

It imports ``digits.nn`` and is never imported by it.
"""
