"""Reading and writing files safely: the one copy of each helper digits uses.

- ``read_bounded`` reads a regular file without ever blocking (a FIFO would wait
  forever for a writer) or reading without end (``/dev/zero``): it opens with
  ``O_NONBLOCK``, checks the type on the open descriptor (so a path swapped after
  a ``stat`` cannot slip through), and reads at most ``limit + 1`` bytes.
- ``atomic_write`` writes a temporary file beside the destination, flushes it to
  disk and renames it into place, so readers see the old file or the new one,
  never half of one, even after a crash or a power cut.
- ``move_aside`` renames a damaged file so that nothing is lost.
- ``read_json`` reads strict JSON (no NaN) from a bounded regular file.
- ``sha256_file`` hashes a file in blocks.

The errors are OSErrors (``NotAFile``, ``TooLarge``, and Python's own), so each
caller can turn them into a message in its own words.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # what an ordinary file gets (mkstemp would make it private)
# What a path can be instead of a regular file, in words for a message.
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a broken symbolic link"),  # seen only through lstat
)


class NotAFile(OSError):
    """The path exists but is not a regular file; ``kind`` says what it is."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(f"{path} is {kind}, not a regular file")
        self.filename = os.fspath(path)
        self.kind = kind


class TooLarge(OSError):
    """The file holds more than ``limit`` bytes."""

    def __init__(self, path: str | os.PathLike[str], limit: int) -> None:
        super().__init__(f"{path} is larger than {limit:,} bytes")
        self.filename = os.fspath(path)
        self.limit = limit


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a directory"...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for binary reading, only if it is a regular file.

    Raises NotAFile for anything else (a folder, a FIFO, a device, a socket),
    FileNotFoundError, or another OSError; never blocks.
    """
    # Checked before opening too: opening some devices has effects of its own.
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotAFile(path, file_kind(mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFile(path, file_kind(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file ``path``; TooLarge if over ``limit`` bytes.

    Reads at most ``limit + 1`` bytes, so a file that grows while it is read is
    caught too. Raises as ``open_regular`` does.
    """
    with open_regular(path) as f:
        if os.fstat(f.fileno()).st_size > limit:
            raise TooLarge(path, limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(path, limit)
    return data


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json(path: str | os.PathLike[str], limit: int):
    """The JSON value in the regular file ``path`` of at most ``limit`` bytes.

    Strict: NaN and Infinity (which Python's json writes but JSON lacks) are
    refused, as digits never writes them. Raises as ``read_bounded`` does, and
    ValueError (UnicodeDecodeError, JSONDecodeError) or RecursionError (nesting
    too deep) for text that is not JSON.
    """
    text = read_bounded(path, limit).decode("utf-8")
    return json.loads(text, parse_constant=_no_constants)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a regular file, as hex."""
    with open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` survive a power cut (where the OS allows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    dest: str | os.PathLike[str],
    data: bytes | str | Callable[[BinaryIO], None],
    *,
    mode: int = FILE_MODE,
) -> None:
    """Replace ``dest`` with ``data`` (bytes, UTF-8 text, or a function that
    writes to the open binary file) in one step.

    A temporary file beside ``dest`` is written, flushed to disk and renamed
    over ``dest``; on any failure it is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if something failed
    fsync_dir(dest.parent)


def move_aside(path: str | os.PathLike[str], why: str = "corrupt") -> Path:
    """Rename ``path`` to ``<name>.<why>-<time>`` (unique) and return the new
    path, so a damaged file is kept for inspection instead of overwritten."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
        n += 1
    path.rename(aside)
    return aside
