"""A sweep's results table: one CSV row per trial, safe to share between processes.

The table is ``$DIGITS_RUNS_DIR/.sweeps/<name>/results.csv``: test accuracy and
loss, training time, parameter count, depth, width and the training-loss curve
of each finished trial. Several processes may run one sweep at once (two
terminals, two dashboard sessions, a terminal and the dashboard). Adding a row
(``append_result``) takes an exclusive ``flock`` on ``.results.csv.lock`` beside
the table, re-reads the table, keeps one row per trial key and replaces the file
atomically, so no row is lost or doubled, and a reader never sees a half-written
table.

A table that cannot be read (not UTF-8, not CSV, no ``key`` column, a row
without a key) is refused with a TableError naming the file and line; one
damaged while a sweep runs is kept aside as ``results.csv.corrupt-<time>`` and a
fresh table started with the rows the sweep knows. ``summarise`` and
``pareto_front`` turn the rows into what the Experiments page and the CLI show.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digits import files, store
from digits.errors import DataError
from digits.experiments.planning import RESULTS_FILE, depth, sweeps_dir, width

log = logging.getLogger(__name__)

LOCK_FILE = ".results.csv.lock"  # beside the table: whoever holds it may rewrite it
CORRUPT = "corrupt"  # results.csv.corrupt-<time>: a damaged table kept
# 200 trials' rows (with their 50-point curves) take about 0.3 MB; a table a
# hundred times that is not one this program wrote, and is not read whole.
MAX_TABLE_BYTES = 32 * 2**20
COLUMNS = (
    "key",
    "sweep",
    "label",
    "seed",
    "status",
    "kind",
    "dataset",
    "train_size",
    "epochs",
    "conv_channels",
    "hidden_layer_sizes",
    "depth",
    "width",
    "n_params",
    "val_accuracy",
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "seconds",
    "run",
    "config",
    "params",
    "curve",
    "error",
    "finished",
)
JSON_COLUMNS = ("conv_channels", "hidden_layer_sizes", "config", "params", "curve")
INT_COLUMNS = ("seed", "train_size", "epochs", "depth", "width", "n_params")
FLOAT_COLUMNS = (
    "val_accuracy",
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "seconds",
)
INTERNAL_KEYS = ("elsewhere",)  # in a trial's row on its way, never in the table


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in JSON_COLUMNS:
        return json.dumps(store.jsonable(value), separators=(",", ":"))
    return str(value)


def write_results(path: str | os.PathLike[str], rows: Sequence[Mapping]) -> None:
    """Replace the results table at ``path`` with ``rows``, atomically.

    The rows go to a temp file beside it, which is flushed to disk and renamed
    over the table, so a reader sees the old table or the new one, never part of
    one, and a crash leaves one of the two. Several processes adding rows to one
    table must go through ``append_result`` instead, which holds the table's lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Columns this version does not write (a newer version's, or a user's own)
    # are kept after its own, so that rewriting the table loses nothing.
    extra = [
        c
        for c in dict.fromkeys(k for row in rows for k in row)
        if isinstance(c, str) and c not in COLUMNS and c not in INTERNAL_KEYS
    ]
    columns = (*COLUMNS, *extra)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(c, row.get(c)) for c in columns})
    files.atomic_write(path, buffer.getvalue())


class TableError(DataError):
    """A results table that cannot be read: not text, not CSV, not a sweep's."""


def _read_text(path: Path) -> str | None:
    """The table's text, or None if there is none; reads at most
    MAX_TABLE_BYTES + 1 bytes of a regular file (never blocks on a FIFO)."""
    try:
        data = files.read_bounded(path, MAX_TABLE_BYTES)
    except FileNotFoundError:
        return None
    except files.NotAFile:
        raise TableError(
            f"{path} is not a file; a sweep's results table must be one. Move "
            f"it away, then run the sweep again."
        ) from None
    except files.TooLarge:
        raise TableError(
            f"{path} is larger than {MAX_TABLE_BYTES // 2**20} MB, far more than a "
            f"sweep writes, so it was not read. Move it away, then run the sweep "
            f"again to start a new table."
        ) from None
    except OSError as err:
        raise TableError(
            f"Cannot read the sweep table {path} ({err.strerror}). Check the "
            f"folder's permissions, or set DIGITS_RUNS_DIR to another folder."
        ) from err
    if b"\0" in data:
        # What a crash on some filesystems leaves: blocks of zeros, not text.
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise TableError(
            f"{path} is not a sweep's results table: line {line} has a NUL byte "
            f"(the file is damaged). {_MOVE_IT}"
        )
    try:
        # utf-8-sig: a table saved again by a spreadsheet may start with a BOM.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TableError(
            f"{path} is not a sweep's results table: line {line} is not UTF-8 "
            f"text. {_MOVE_IT}"
        ) from None


_MOVE_IT = (
    "It was left as it is: move it away (or delete it), then run the sweep again "
    "to start a new table; the runs it lists stay in the runs folder."
)


def read_results(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a results table, typed; [] if there is none yet.

    Raises TableError (a DataError) naming the file and the line if it is not a
    sweep's table: too large, not UTF-8, not CSV, without a ``key`` or
    ``status`` column, with a row that has no key or an unreadable value. The
    file is only read.
    """
    path = Path(path)
    text = _read_text(path)
    if text is None or not text.strip():
        return []  # none yet, or an empty file (never a table this program wrote)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        fields = reader.fieldnames
        missing = [c for c in ("key", "status") if c not in (fields or ())]
        if missing:
            raise TableError(
                f"{path} is not a sweep's results table (no {missing[0]!r} column). "
                f"{_MOVE_IT}"
            )
        for raw in reader:
            if not (raw.get("key") or "").strip():
                raise TableError(
                    f"{path} is not a sweep's results table: line "
                    f"{reader.line_num} has no key. {_MOVE_IT}"
                )
            rows.append(_typed(path, reader.line_num, raw))
    except csv.Error as err:
        raise TableError(
            f"{path} is not a sweep's results table: line {reader.line_num} is not "
            f"CSV ({err}). {_MOVE_IT}"
        ) from None
    return rows


def _typed(path: Path, line: int, raw: Mapping[str | None, Any]) -> dict:
    row: dict[str, Any] = {}
    for column, text_value in raw.items():
        if column is None:
            continue  # cells beyond the header's columns
        try:
            if text_value in ("", None):
                row[column] = None
            elif column in JSON_COLUMNS:
                row[column] = json.loads(text_value)
            elif column in INT_COLUMNS:
                row[column] = int(text_value)
            elif column in FLOAT_COLUMNS:
                row[column] = float(text_value)
            else:
                row[column] = text_value
        except (ValueError, RecursionError) as err:
            raise TableError(
                f"{path} has an unreadable {column} value {text_value[:40]!r} on "
                f"line {line} ({str(err)[:80]}). {_MOVE_IT}"
            ) from None
    return row


@contextlib.contextmanager
def table_lock(path: Path):
    """Hold the exclusive lock of the table at ``path`` (blocks until free).

    A ``flock`` on a file beside the table, never on the table itself: the table
    is replaced by rename, and a lock on the old file would lock nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(
        path.with_name(LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _rank(row: Mapping | None) -> int:
    """Which of two rows of one trial a table keeps: done over failed over
    anything else; the one already there on a tie."""
    return {"done": 2, "failed": 1}.get((row or {}).get("status"), 0)


def append_result(
    path: str | os.PathLike[str],
    row: Mapping,
    *,
    salvage: Sequence[Mapping] | None = None,
) -> bool:
    """Add one trial's row to the table at ``path``; safe from many processes.

    Under the table's lock: re-read the table, keep one row per trial key (a
    ``done`` row over a ``failed`` one; otherwise the row already there), and
    replace the table atomically. Returns whether the table changed.

    salvage : if the table cannot be read, it is kept aside
        (``results.csv.corrupt-<time>``, with a warning in the log) and a new one
        is written from these rows plus ``row``. Without it (None), TableError.
    """
    path = Path(path)
    with table_lock(path):
        try:
            rows = read_results(path)
        except TableError as err:
            if salvage is None:
                raise
            aside = files.move_aside(path, CORRUPT)
            log.warning(
                "%s Kept it as %s; a new table was started with the %d row(s) "
                "this sweep knows.",
                err,
                aside.name,
                len(salvage) + 1,
            )
            found, rows = [], []
            for known in salvage:
                _merge(rows, known)
        else:
            found, rows = rows, []
            for old in found:  # a table from before the lock may repeat a key
                _merge(rows, old)
        changed = _merge(rows, row) or len(rows) != len(found)
        if changed:
            write_results(path, rows)
    return changed


def _merge(rows: list[dict], row: Mapping) -> bool:
    """Put ``row`` into ``rows`` (one per key); whether ``rows`` changed."""
    for i, old in enumerate(rows):
        if old.get("key") == row["key"]:
            if _rank(row) > _rank(old):
                rows[i] = dict(row)
                return True
            return False
    rows.append(dict(row))
    return True


def list_sweeps() -> list[Path]:
    """Results tables of the saved sweeps, newest first."""
    root = sweeps_dir()
    tables = [p for p in root.glob(f"*/{RESULTS_FILE}")] if root.is_dir() else []
    return sorted(tables, key=lambda p: p.stat().st_mtime, reverse=True)


# -- analysis -----------------------------------------------------------------------


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """One row per configuration (label) over its seeds, in first-seen order.

    Each has ``label``, ``depth``, ``width``, ``n_params``, ``n`` (seeds done),
    ``val_mean``/``val_std``, the last epoch's accuracy on the held-out
    validation images (what configurations are compared by; None for rows of a
    table written before it was recorded), ``accuracy_mean``/``accuracy_std``, the
    test accuracy (sample standard deviations; 0 for one seed), and
    ``seconds_mean`` (training time). Failed trials are left out.
    """
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        if row.get("status") == "done" and row.get("test_accuracy") is not None:
            groups.setdefault(row["label"], []).append(row)
    summary = []
    for label, members in groups.items():
        acc = np.array([m["test_accuracy"] for m in members], dtype=float)
        secs = np.array([m["train_seconds"] for m in members], dtype=float)
        vals = [m.get("val_accuracy") for m in members]
        val = np.array(vals, dtype=float) if None not in vals else None
        first = members[0]
        summary.append(
            {
                "label": label,
                "depth": depth(first),
                "width": width(first),
                "conv_channels": first["conv_channels"],
                "hidden_layer_sizes": first["hidden_layer_sizes"],
                "n_params": first["n_params"],
                "n": len(members),
                "val_mean": None if val is None else float(val.mean()),
                "val_std": None if val is None else _std(val),
                "accuracy_mean": float(acc.mean()),
                "accuracy_std": _std(acc),
                "seconds_mean": float(secs.mean()),
            }
        )
    return summary


def compared_by(summary: Sequence[Mapping]) -> tuple[str, str, str]:
    """What ``summary``'s configurations are compared by: (mean key, spread key,
    what it is in words). The validation accuracy (held-out training images),
    so that choosing a configuration never looks at the test set; the test
    accuracy only for a table written before validation was recorded."""
    if summary and all(r.get("val_mean") is not None for r in summary):
        return "val_mean", "val_std", "validation accuracy"
    return "accuracy_mean", "accuracy_std", "test accuracy"


def _std(values: np.ndarray) -> float:
    """Sample standard deviation; 0 for a single value."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def pareto_front(cost: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Which points no other point beats: none is as cheap or cheaper and at
    least as good, and strictly better in one. Boolean array, shape (n,)."""
    cost, score = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    front = np.zeros(len(cost), dtype=bool)
    best = -np.inf
    for i in np.lexsort((-score, cost)):  # by cost, then best score first
        if score[i] > best:
            front[i] = True
            best = score[i]
    return front
