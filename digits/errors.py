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


class StorageError(DigitsError):
    """The runs folder cannot hold a run: it is a file, read-only or full."""


class PreprocessError(DigitsError):
    """A user image could not be read or is too large."""


class NoDigitFound(PreprocessError):
    """The image is blank: there is no ink to classify."""


class TrainingDataError(DataError, ValueError):
    """A training set an estimator cannot learn from: too few images or classes,
    labels outside ``classes``, too few images to hold out for early stopping.

    Also a ValueError, as scikit-learn's estimator checks expect of ``fit``.
    """


class TrainingStopped(DigitsError):
    """Training ended partway, for a reason that is not a setting or the data.

    ``usable`` says whether the estimator now holds finite weights from at least
    one finished batch (or epoch), which the caller may save; when False nothing
    was trained and the estimator is as if unfitted. The message says which.
    """

    def __init__(self, message: str, *, usable: bool = False) -> None:
        super().__init__(message)
        self.usable = usable


class TrainingDiverged(TrainingStopped):
    """The loss became non-finite or exploded, or the weights became non-finite;
    the last good weights were kept (see ``usable``)."""


class TrainingInterrupted(TrainingStopped):
    """The second training process died (the out-of-memory killer, say); the
    weights of the last finished epoch were kept (see ``usable``)."""


class ConfigError(DigitsError):
    """A hyperparameter or grid value is invalid."""


class HandwritingError(DigitsError):
    """The store of the user's own labelled drawings could not be read or written."""


class HandwritingCorrupt(HandwritingError):
    """The drawings database was damaged: it was kept aside and a fresh one begun."""
