"""The user's own labelled digits ("my handwriting"), kept in a local SQLite file.

`HandwritingStore(path)` adds drawings (the preprocessed 28x28 uint8 image the
models read, its true label, when, drawn or uploaded, and optionally the raw
drawing as PNG bytes), loads them as arrays, deletes them and exports them as
`.npz` or CSV (the CSV loads back with `digits.data.load_dataset(path)`).

The file lives at `$DIGITS_HANDWRITING_DB` if set, else `handwriting.sqlite` in
the data directory, or in the per-user cache when the data directory is
read-only (as `digits.data` does for its parsed arrays).

Concurrency: every call opens its own connection (so threads never share one),
the database runs in WAL mode, writes are single `BEGIN IMMEDIATE` transactions
and a busy database is waited for (`BUSY_TIMEOUT_S`), so two sessions or two
processes saving at once both succeed. A damaged file is renamed to
`<name>.corrupt-<time>` (with its WAL files), a fresh store is begun, and
`HandwritingCorrupt` says so.

Nothing is pickled: images are raw bytes, exports use `allow_pickle=False`.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from digits import data, files
from digits.errors import HandwritingCorrupt, HandwritingError

DB_ENV = "DIGITS_HANDWRITING_DB"
DB_NAME = "handwriting.sqlite"
SIDE = 28  # images are stored as the MNIST models read them
LABELS = range(10)
SOURCES = ("drawn", "uploaded")
BUSY_TIMEOUT_S = 15.0  # how long a write waits for another writer
SCHEMA_VERSION = 1
# SQLite's primary result codes for a damaged file and for "not a database".
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS drawings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
    image BLOB NOT NULL CHECK (length(image) = {SIDE * SIDE}),
    raw_png BLOB,
    source TEXT NOT NULL CHECK (source IN {SOURCES!r}),
    created REAL NOT NULL  -- seconds since the epoch
);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class Drawings(NamedTuple):
    """The saved drawings, oldest first.

    images : uint8 (n, 28, 28), white ink on black, as the models read them
    labels : int64 (n,), the true digits
    ids : int64 (n,), the store's ids (for `delete`)
    times : float64 (n,), seconds since the epoch
    sources : tuple of n strings, "drawn" or "uploaded"
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    times: np.ndarray
    sources: tuple[str, ...]


def default_path() -> Path:
    """`$DIGITS_HANDWRITING_DB`, else the data directory's file if it is writable,
    else the per-user cache's (beside `digits.data.npy_cache_dir()`)."""
    configured = os.environ.get(DB_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    folder = data.data_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # judged just below
    if data._is_writable_dir(folder):
        return folder / DB_NAME
    return data.npy_cache_dir().parent / DB_NAME


def _as_image(image: np.ndarray) -> np.ndarray:
    """A (28, 28) uint8 image from uint8 0..255 or float 0..1 pixels."""
    array = np.asarray(image)
    if array.shape != (SIDE, SIDE):
        raise HandwritingError(
            f"A saved drawing must be the {SIDE}x{SIDE} preprocessed image; "
            f"got shape {array.shape}."
        )
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise HandwritingError(
            f"A saved drawing must have uint8 or float pixels; got {array.dtype}."
        )
    return np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)


def _png(raw: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(raw, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class HandwritingStore:
    """The labelled drawings in the SQLite file at ``path`` (made when needed)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._checked = False  # the integrity check runs once per store object

    def __repr__(self) -> str:
        return f"HandwritingStore({str(self.path)!r})"

    # -- connections ------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are the explicit BEGINs below.
            con = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
        except (OSError, sqlite3.Error) as err:
            raise HandwritingError(
                f"Cannot open the handwriting store {self.path}: {err}. Set "
                f"{DB_ENV} to a file in a writable directory."
            ) from err
        return con

    def _prepare(self, con: sqlite3.Connection) -> None:
        """Check the file once, then make sure the table exists (idempotent)."""
        if not self._checked:
            problems = [row[0] for row in con.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
        _use_wal(con)
        if con.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            con.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        self._checked = True

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection; a damaged file is set aside, other errors explained."""
        seen = self._identity()
        try:
            with closing(self._connect()) as con:
                self._prepare(con)
                yield con
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and _code(err) not in (
                _CORRUPT_CODES
            ):
                raise HandwritingError(
                    f"The handwriting store {self.path} could not be used: {err}. "
                    "If another session is saving, try again in a moment."
                ) from err
            raise self._start_fresh(err, seen) from err

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _start_fresh(self, err: Exception, seen: tuple[int, int] | None) -> Exception:
        """Rename the damaged file (and its WAL files) aside; return the error."""
        aside = None
        # Another process may already have replaced it with a fresh store.
        if seen is not None and self._identity() == seen:
            try:
                aside = files.move_aside(self.path)
                for suffix in _SIDE_FILES:
                    side = self.path.with_name(self.path.name + suffix)
                    if side.exists():
                        side.rename(aside.with_name(aside.name + suffix))
            except OSError as move_err:
                return HandwritingError(
                    f"The handwriting store {self.path} is damaged ({err}) and could "
                    f"not be moved aside ({move_err}). Move or delete it by hand."
                )
        self._checked = False
        kept = (
            f"It was kept as {aside.name}"
            if aside is not None
            else "Another session had already kept it aside"
        )
        return HandwritingCorrupt(
            f"The handwriting store {self.path} was damaged ({err}). {kept} and a "
            "fresh, empty store was started; the drawings saved before are in that "
            "file."
        )

    # -- reading ----------------------------------------------------------------

    def count(self) -> int:
        """How many drawings are saved."""
        with self._session() as con:
            return con.execute("SELECT count(*) FROM drawings").fetchone()[0]

    def load(self) -> Drawings:
        """Every saved drawing, oldest first (see `Drawings`)."""
        with self._session() as con:
            rows = con.execute(
                "SELECT id, label, image, source, created FROM drawings ORDER BY id"
            ).fetchall()
        images = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8)
        return Drawings(
            images=images.reshape(len(rows), SIDE, SIDE).copy(),
            labels=np.array([r[1] for r in rows], dtype=np.int64),
            ids=np.array([r[0] for r in rows], dtype=np.int64),
            times=np.array([r[4] for r in rows], dtype=np.float64),
            sources=tuple(r[3] for r in rows),
        )

    def raw_png(self, drawing_id: int) -> bytes | None:
        """The raw drawing of ``drawing_id`` as PNG bytes, if one was saved."""
        with self._session() as con:
            row = con.execute(
                "SELECT raw_png FROM drawings WHERE id = ?", (int(drawing_id),)
            ).fetchone()
        if row is None:
            raise HandwritingError(f"No saved drawing has id {drawing_id}.")
        return row[0]

    # -- writing ----------------------------------------------------------------

    def add(
        self,
        image: np.ndarray,
        label: int,
        *,
        source: str = "drawn",
        raw: np.ndarray | None = None,
        created: float | None = None,
    ) -> int:
        """Save one drawing; returns its id.

        image : (28, 28) uint8 0..255 or float 0..1, the preprocessed digit
        label : the true digit, 0-9
        source : "drawn" or "uploaded"
        raw : optional (H, W) uint8 grayscale original, stored as PNG
        created : seconds since the epoch, default now
        """
        pixels = _as_image(image)
        if isinstance(label, bool) or not isinstance(label, int | np.integer):
            raise HandwritingError(f"The label must be a digit 0-9; got {label!r}.")
        if int(label) not in LABELS:
            raise HandwritingError(f"The label must be a digit 0-9; got {label}.")
        if source not in SOURCES:
            raise HandwritingError(
                f"The source must be one of {', '.join(SOURCES)}; got {source!r}."
            )
        png = None if raw is None else _png(raw)
        with self._session() as con:
            con.execute("BEGIN IMMEDIATE")
            cursor = con.execute(
                "INSERT INTO drawings (label, image, raw_png, source, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    int(label),
                    pixels.tobytes(),
                    png,
                    source,
                    time.time() if created is None else float(created),
                ),
            )
            con.execute("COMMIT")
            return int(cursor.lastrowid)

    def delete(self, ids: Sequence[int]) -> int:
        """Delete the drawings with these ids (in one transaction); returns how many."""
        with self._session() as con:
            con.execute("BEGIN IMMEDIATE")
            deleted = con.executemany(
                "DELETE FROM drawings WHERE id = ?", [(int(i),) for i in ids]
            ).rowcount
            con.execute("COMMIT")
        return deleted

    def clear(self) -> int:
        """Delete every drawing; returns how many there were."""
        with self._session() as con:
            con.execute("BEGIN IMMEDIATE")
            deleted = con.execute("DELETE FROM drawings").rowcount
            con.execute("COMMIT")
        return deleted

    def integrity(self) -> str:
        """SQLite's full ``PRAGMA integrity_check``: "ok" for a sound file."""
        with self._session() as con:
            return "; ".join(row[0] for row in con.execute("PRAGMA integrity_check"))

    # -- export -----------------------------------------------------------------

    def export_npz(self) -> bytes:
        """The drawings as ``.npz`` bytes: ``images`` (n, 28, 28) uint8, ``labels``,
        ``ids``, ``times`` and ``sources`` (unicode); loads with allow_pickle=False."""
        saved = self.load()
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            images=saved.images,
            labels=saved.labels,
            ids=saved.ids,
            times=saved.times,
            sources=np.array(saved.sources, dtype=f"<U{max(map(len, SOURCES))}"),
        )
        return buffer.getvalue()

    def export_csv(self) -> bytes:
        """The drawings as CSV bytes: ``label,pixel0..pixel783`` per row, the
        layout `digits.data.load_dataset` reads."""
        saved = self.load()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["label", *(f"pixel{i}" for i in range(SIDE * SIDE))])
        for label, image in zip(saved.labels, saved.images, strict=True):
            writer.writerow([int(label), *image.ravel().tolist()])
        return text.getvalue().encode()


def _use_wal(con: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging, so readers never wait for writers.

    The switch needs the file to itself, and SQLite answers "database is locked"
    at once, without its busy timeout, if another connection is opening the
    same new file (two sessions saving their first drawings): so wait here, up
    to `BUSY_TIMEOUT_S`, as a write would. Once one of them has switched, the
    file stays in WAL mode.
    """
    if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            # A file system without WAL keeps its mode and says so: used as is.
            con.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if _code(err) != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _code(err: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``err`` (extended codes keep it low)."""
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def load_npz(source: str | os.PathLike[str] | bytes) -> Drawings:
    """Read an export of `HandwritingStore.export_npz` back (no pickles)."""
    file = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with np.load(file, allow_pickle=False) as npz:
            return Drawings(
                images=npz["images"],
                labels=npz["labels"],
                ids=npz["ids"],
                times=npz["times"],
                sources=tuple(str(s) for s in npz["sources"]),
            )
    except (OSError, ValueError, KeyError) as err:
        raise HandwritingError(
            f"Not an export of saved drawings ({err}); export them again from the "
            "Evaluate page."
        ) from err


def predict(model, drawings: Drawings, n_classes: int = 10) -> np.ndarray:
    """A fitted 28x28 digit model's probabilities (n, n_classes) on ``drawings``."""
    from digits import store  # store pulls in the models; only needed here

    if not len(drawings.labels):
        return np.zeros((0, n_classes), dtype=np.float32)
    return store.predict_proba_full(model, drawings.images, n_classes)
