"""Errors a user can cause, each carrying a message that says what to do.

Everything the app and the CLI show a user derives from `DigitsError`, so one
`except DigitsError` turns any of them into a clean message instead of a traceback.
"""


class DigitsError(Exception):
    """Base class: the message is written for the user, names the file or value."""


class DataError(DigitsError):
    """A dataset could not be found, downloaded, parsed or validated."""


class DownloadError(DataError):
    """Every mirror failed for a file, or the network is unavailable."""


class ModelFileError(DigitsError):
    """A saved model is missing, corrupt, tampered with or incompatible."""


class PreprocessError(DigitsError):
    """A user image could not be read or is too large."""


class NoDigitFound(PreprocessError):
    """The image is blank: there is no ink to classify."""


class TrainingDiverged(DigitsError):
    """The loss became non-finite; the last good weights were kept."""


class ConfigError(DigitsError):
    """A hyperparameter or grid value is invalid."""


class HandwritingError(DigitsError):
    """The store of the user's own labelled drawings could not be read or written."""


class HandwritingCorrupt(HandwritingError):
    """The drawings database was damaged: it was kept aside and a fresh one begun."""
