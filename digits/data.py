"""Datasets of handwritten digits: find, download, verify, parse and cache them.

`load_dataset(name)` returns a `Dataset` of uint8 images `(n, height, width)` and
int64 labels for one of the names in `DATASETS` ("mnist", "fashion-mnist",
"sklearn-digits") or for a path to a CSV file of flattened images.

MNIST and Fashion-MNIST come as the four original IDX gzip files, kept under
`data_dir()/<dataset>/` with their upstream names. Missing files are downloaded
from `MIRRORS` (first mirror that works wins), checked against SHA-256 values
pinned here, and only then renamed into place, so a partial file is never left
behind. A cached file whose checksum is wrong is moved aside (never deleted) and
fetched again once.

Parsed arrays are cached as `.npy` files beside the gzip files, or in a per-user
cache (`npy_cache_dir()`: `$XDG_CACHE_HOME/digits/npy`, default
`~/.cache/digits/npy`, on Linux) when the data directory is read-only, and
memory-mapped on later loads. Cache files are named by the SHA-256 of their
source, which is checked on every load, and each has a JSON sidecar
(`<cache>.npy.json`, written after it) recording the source's SHA-256, the array's
shape and dtype, and the size and SHA-256 of the cache file's own bytes. A cache
that disagrees with its sidecar in any of these, or has none, is rebuilt from the
source, so a damaged cache is never served. Hashing MNIST's 55 MB of caches makes
a cached load take about 40-60 ms instead of 10-15 ms. Caches are read with
`np.frombuffer`, never unpickled. The check finds damage (a bad disk, a crash, a
stray program), not forgery: whoever can write both files can agree them.

Every file given by a user (a CSV path, an IDX file) is read only if it is a regular
file, and at most `CSV_MAX_BYTES` / `IDX_MAX_BYTES` of it (gzip output included),
so a directory, a FIFO or `/dev/zero` gets a message at once instead of a hang.
CSVs are UTF-8 (a byte-order mark is allowed); other encodings are refused with the
line of the first byte that is not UTF-8.

Left out: Matlab `.mat` files (such as the original 20x20 set) and the "10 means 0"
label convention of that set; export it as a CSV with labels 0-9.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import logging
import math
import mmap
import os
import struct
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import platformdirs

from digits import files
from digits.errors import ConfigError, DataError, DownloadError
from digits.humanize import plural

log = logging.getLogger(__name__)  # downloads, fallbacks: the CLI's -v shows them

DATA_DIR_ENV = "DIGITS_DATA_DIR"
CACHE_DIR_ENV = "DIGITS_CACHE_DIR"
APP_NAME = "digits"  # the folder's name in the platform's cache (platformdirs)
DOWNLOAD_TIMEOUT_S = 30  # per connection attempt and per blocking read
# The largest pinned file is 26 MB: a server sending more is not sending it.
DOWNLOAD_MAX_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1 << 16
SPLIT_SEED = 0  # fixed seed of every train/test split made here
SKLEARN_TEST_FRACTION = 0.2
CSV_TEST_FRACTION = 1 / 6  # MNIST's own ratio: 10,000 of 60,000
SKLEARN_DIGITS_MAX = 16  # sklearn's 8x8 digits count ink in 0..16
# Resampled float sets (the 20x20 set of 5,000) ring slightly outside 0..1.
FLOAT_PIXEL_SLACK = 0.25
LABEL_POSITIONS = ("auto", "first", "last")  # where a CSV keeps its label column
# Streamlit's default upload limit (the dashboard's own is lower); a CSV this
# large parses to at most ~800 MB of float64.
CSV_MAX_BYTES = 200 * 1024 * 1024
CSV_MAX_SIDE = 256  # widest image a CSV row may hold: digits are far smaller
# A CSV needs 2 classes to train on, and one more row to test on.
CSV_MIN_ROWS = 3
# MNIST's largest file is 47 MB unpacked; this bounds a gzip bomb's output.
IDX_MAX_BYTES = 256 * 1024 * 1024
CACHE_META_MAX_BYTES = 4096  # a cache sidecar is ~300 bytes of JSON

Progress = Callable[[int, int | None, str], None]
"""`progress(done_bytes, total_bytes, filename)`; total is None if unknown."""


class Dataset(NamedTuple):
    """Train and test images with their labels.

    x_train, x_test : uint8 arrays of shape (n, height, width), 0 = background
    y_train, y_test : int64 arrays of shape (n,), values in 0..len(class_names)-1
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    name: str
    checksum: str  # SHA-256 hex identifying the source data


@dataclass(frozen=True)
class IdxSource:
    """A dataset published as MNIST's four IDX gzip files."""

    folder: str  # sub-folder of the data directory
    class_names: tuple[str, ...]
    sha256: Mapping[str, str]  # upstream file name -> pinned SHA-256


DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# (images file, labels file) per split, the same names for both datasets.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _parse_sums(text: str) -> dict[str, str]:
    """`sha256sum` output -> {file name: hex digest}."""
    return {name: digest for digest, name in map(str.split, text.strip().splitlines())}


# Pinned from the upstream SHA256SUMS (also in /work/shared/data/*/SHA256SUMS).
IDX_SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        folder="mnist",
        class_names=DIGIT_NAMES,
        sha256=_parse_sums("""
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  t10k-labels-idx1-ubyte.gz
"""),  # noqa: E501
    ),
    "fashion-mnist": IdxSource(
        folder="fashion-mnist",
        class_names=FASHION_NAMES,
        sha256=_parse_sums("""
3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84  train-images-idx3-ubyte.gz
a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845  train-labels-idx1-ubyte.gz
346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073  t10k-images-idx3-ubyte.gz
67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5  t10k-labels-idx1-ubyte.gz
"""),  # noqa: E501
    ),
}

# Tried in order; tests swap in a local server. Same mirrors as torchvision/tf.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

# IDX header: magic number (0x0000, type 0x08 = ubyte, number of dimensions).
IDX_MAGIC = {"images": 2051, "labels": 2049}
IDX_NDIM = {"images": 3, "labels": 1}


def cache_dir() -> Path:
    """The per-user cache folder: `$DIGITS_CACHE_DIR` if set, else the platform's
    own for "digits" (platformdirs): `$XDG_CACHE_HOME/digits`, by default
    `~/.cache/digits`, on Linux; `~/Library/Caches/digits` on macOS;
    `%LOCALAPPDATA%\\digits\\Cache` on Windows."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return platformdirs.user_cache_path(APP_NAME, appauthor=False).absolute()


def data_dir() -> Path:
    """The data directory: `$DIGITS_DATA_DIR` if set, else `cache_dir()` (the
    datasets' files can always be downloaded again, so they are a cache)."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser().absolute() if configured else cache_dir()


def _root(given: str | os.PathLike[str] | None) -> Path:
    return Path(given).expanduser().absolute() if given is not None else data_dir()


def npy_cache_dir() -> Path:
    """Per-user cache of parsed arrays, used when the data directory is read-only:
    `npy/` in `cache_dir()`."""
    return cache_dir() / "npy"


# --------------------------------------------------------------------- files


def _read_error(path: Path, what: str, err: OSError) -> DataError:
    """A ``digits.files`` error reading ``path`` (a ``what``), in our words."""
    if isinstance(err, FileNotFoundError):
        return DataError(f"{what[0].upper()}{what[1:]} not found: {path}")
    if isinstance(err, files.NotAFile):
        return DataError(
            f"{path} is {err.kind}, not a regular file: give the path of a {what}"
        )
    if isinstance(err, files.TooLarge):
        return DataError(
            f"{path} is larger than {err.limit / 2**20:.0f} MB, the most a {what} "
            "may hold here: keep fewer rows or split it"
        )
    return DataError(f"Cannot read {path}: {err.strerror or err}")


def _opened(path: Path, what: str) -> BinaryIO:
    """``path`` open for reading if it is a regular file; DataError otherwise."""
    try:
        return files.open_regular(path)
    except OSError as err:
        raise _read_error(path, what, err) from None


def _sha256_file(path: Path) -> str:
    try:
        return files.sha256_file(path)
    except OSError as err:
        raise _read_error(path, "file", err) from None


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file `path`, refused if longer than `limit`."""
    try:
        return files.read_bounded(path, limit)
    except OSError as err:
        raise _read_error(path, what, err) from None


def _is_writable_dir(folder: Path) -> bool:
    """Whether we may write into `folder`.

    Root passes every `os.access` check, so for root the permission bits decide:
    a directory someone made read-only (like the shared data) stays untouched.
    """
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return bool(folder.stat().st_mode & 0o222)
    return True


def _require_writable_dir(folder: Path, why: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"Cannot create the directory {folder} to {why}: {err.strerror or err}. "
            f"Set {DATA_DIR_ENV} to a writable directory."
        ) from err
    if not _is_writable_dir(folder):
        raise DataError(
            f"The directory {folder} is not writable, so cannot {why}. "
            f"Set {DATA_DIR_ENV} to a writable directory."
        )


def _move_aside(path: Path, problem: str) -> Path:
    """Rename a bad file to `<name>.corrupt-<timestamp>` so nothing is lost."""
    if not _is_writable_dir(path.parent):
        raise DataError(
            f"{path}: {problem}. Its directory is read-only, so it cannot be "
            "replaced automatically: put a good copy there, or set "
            f"{DATA_DIR_ENV} to a writable directory to download one."
        )
    try:
        return files.move_aside(path)
    except OSError as err:
        raise DataError(
            f"{path}: {problem}, and it could not be moved aside ({err})."
        ) from err


# ------------------------------------------------------------------ download


class _BadDownload(Exception):
    """A mirror answered, but not with the file we pinned."""


def _url(mirror: str, filename: str) -> str:
    return mirror if mirror.endswith(filename) else mirror.rstrip("/") + "/" + filename


def _fetch_once(url: str, dest: Path, sha256: str, progress: Progress | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "digits"})

    def write(out: BinaryIO) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            too_big = f"more than {DOWNLOAD_MAX_BYTES / 2**20:.0f} MB, not the file"
            if total is not None and total > DOWNLOAD_MAX_BYTES:
                raise _BadDownload(f"the server offers {total} bytes: {too_big}")
            done = 0
            if progress is not None:
                progress(0, total, dest.name)
            while chunk := response.read(CHUNK_BYTES):
                if done + len(chunk) > DOWNLOAD_MAX_BYTES:
                    raise _BadDownload(f"the server sent {too_big}")
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total, dest.name)
        # http.client returns b"" instead of raising when the server hangs up.
        if total is not None and done != total:
            raise _BadDownload(f"connection closed after {done} of {total} bytes")
        got = digest.hexdigest()
        if got != sha256:
            raise _BadDownload(
                f"SHA-256 mismatch ({done} bytes, got {got[:16]}..., "
                f"expected {sha256[:16]}...)"
            )
        out.flush()
        os.fsync(out.fileno())

    files.atomic_write(dest, write)


def _download(
    filename: str,
    folder: Path,
    sha256: str,
    mirrors: Sequence[str],
    progress: Progress | None,
    all_files: Sequence[str],
) -> None:
    """Fetch `filename` into `folder` from the first mirror that serves it intact."""
    _require_writable_dir(folder, f"download {filename}")
    failures = []
    for mirror in mirrors:
        url = _url(mirror, filename)
        log.info("Downloading %s to %s", url, folder)
        try:
            _fetch_once(url, folder / filename, sha256, progress)
            return
        except (OSError, http.client.HTTPException, _BadDownload, ValueError) as err:
            log.info("%s failed (%s); trying the next mirror, if any", url, err)
            failures.append(f"  {url}: {err}")
    tried = "\n".join(failures) or "  (no mirrors configured)"
    raise DownloadError(
        f"Could not download {filename}; every mirror failed:\n{tried}\n"
        f"If this computer is offline, get the files elsewhere and put them in "
        f"{folder}/ as: {', '.join(all_files)} "
        f"(or set {DATA_DIR_ENV} to a directory holding a {folder.name}/ folder "
        "with them)."
    )


def fetch(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    mirrors: Sequence[str] | None = None,
) -> Path:
    """Make sure the four IDX files of dataset `name` are present and intact.

    Missing files are downloaded; a file failing its pinned SHA-256 is moved aside
    to `<name>.corrupt-<timestamp>` and downloaded again once. Returns the folder.
    """
    source = _idx_source(name)
    folder = _root(data_dir) / source.folder
    mirrors = MIRRORS.get(name, []) if mirrors is None else mirrors
    names = list(source.sha256)
    for filename, pinned in source.sha256.items():
        path = folder / filename
        if not path.is_file():
            if path.exists() or path.is_symlink():
                mode = (path.stat() if path.exists() else path.lstat()).st_mode
                kind = files.file_kind(mode)
                raise DataError(
                    f"{path} is {kind}, not the IDX file of that name: move it "
                    "away, and the file will be downloaded again"
                )
            _download(filename, folder, pinned, mirrors, progress, names)
            continue
        got = _sha256_file(path)
        if got == pinned:
            continue
        problem = (
            f"checksum mismatch ({path.stat().st_size} bytes, SHA-256 "
            f"{got[:16]}..., expected {pinned[:16]}...): the file is truncated "
            "or corrupt"
        )
        aside = _move_aside(path, problem)
        log.info(
            "%s: %s; moved aside to %s, downloading it again", path, problem, aside
        )
        try:
            _download(filename, folder, pinned, mirrors, progress, names)
        except DownloadError as err:
            raise DownloadError(
                f"{path}: {problem}. It was moved aside to {aside.name}. {err}"
            ) from err
    return folder


def needs_download(name: str, data_dir: str | os.PathLike[str] | None = None) -> bool:
    """True if dataset ``name`` is downloaded and some of its files are missing
    here (so loading it would download them first); False for the others."""
    source = IDX_SOURCES.get(name)
    if source is None:
        return False
    folder = _root(data_dir) / source.folder
    return any(not (folder / f).is_file() for f in source.sha256)


def _idx_source(name: str) -> IdxSource:
    try:
        return IDX_SOURCES[name]
    except KeyError:
        valid = ", ".join(IDX_SOURCES)
        raise DataError(
            f"{name!r} is not a downloadable dataset; valid: {valid}"
        ) from None


# ----------------------------------------------------------------- IDX parse


def _read_bytes(path: Path) -> bytes:
    """The bytes of an IDX file, gunzipped if it ends in .gz; at most IDX_MAX_BYTES
    either way, so a gzip bomb stops at the limit instead of filling memory."""
    raw = _read_bounded(path, IDX_MAX_BYTES, "IDX file")
    if path.suffix != ".gz":
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unpacked:
            out = unpacked.read(IDX_MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path} is not a valid gzip file: it is truncated or corrupt ({err}). "
            "Replace it with an intact copy."
        ) from err
    if len(out) > IDX_MAX_BYTES:
        raise DataError(
            f"{path} unpacks to more than {IDX_MAX_BYTES / 2**20:.0f} MB, far more "
            "than any IDX dataset here: it is not a dataset file. Replace it with "
            "an intact copy."
        )
    return out


def read_idx(path: str | os.PathLike[str], kind: str) -> np.ndarray:
    """Parse one IDX file (gzip or raw) of `kind` "images" or "labels".

    Returns uint8 of shape (n, height, width) for images, (n,) for labels.
    Checks the magic number (2051 images, 2049 labels), the dimensions and that
    the file length matches them exactly.
    """
    path = Path(path)
    expected_magic, ndim = IDX_MAGIC[kind], IDX_NDIM[kind]
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: only {len(raw)} bytes, too short for an IDX {kind} header"
        )
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong magic number {magic}, expected {expected_magic} for "
            f"IDX {kind}. Is this the right file?"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if kind == "images" and 0 in dims[1:]:
        raise DataError(f"{path}: image size {dims[1]}x{dims[2]} is empty")
    needed = header + math.prod(dims)
    if len(raw) != needed:
        shape = "x".join(map(str, dims))
        raise DataError(
            f"{path}: the header promises {shape} {kind} ({needed} bytes) but the "
            f"data has {len(raw)} bytes: the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _check_pair(
    x: np.ndarray, y: np.ndarray, images: Path, labels: Path, n_classes: int
) -> None:
    if len(x) == 0:
        raise DataError(f"{images} holds no images: the file is truncated or wrong")
    if len(x) != len(y):
        raise DataError(
            f"{images} has {len(x)} images but {labels} has {len(y)} labels; "
            "they must match"
        )
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        raise DataError(
            f"{labels}: label {y[bad[0]]} at index {bad[0]} is outside "
            f"0..{n_classes - 1}"
        )


def _read_labels(path: Path) -> np.ndarray:
    return read_idx(path, "labels").astype(np.int64)


def read_idx_split(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    n_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Parse and cross-check an IDX images file and its labels file.

    Returns x uint8 (n, height, width) and y int64 (n,).
    """
    images, labels = Path(images_path), Path(labels_path)
    x = read_idx(images, "images")
    y = _read_labels(labels)
    _check_pair(x, y, images, labels, n_classes)
    return x, y


# ---------------------------------------------------------------- npy cache


def _cached_parse(
    source: Path, sha256: str, parse: Callable[[], np.ndarray]
) -> np.ndarray:
    """`parse()`, memoised in `<stem>.<sha>.npy` beside `source` or per user.

    The cache key is the source's verified SHA-256, and a cache is used only if
    its sidecar (see `_load_cache`) vouches for every byte of it; otherwise it is
    rebuilt from the source. Returns a read-only array (memory-mapped on a hit).
    """
    stem = source.name.removesuffix(".gz")
    name = f"{stem}.{sha256[:16]}.npy"
    places = [source.parent / name, npy_cache_dir() / name]
    for place in places:
        cached = _load_cache(place, sha256)
        if cached is not None:
            log.debug("Read %s from its cache %s", source.name, place)
            return cached
    log.info("Parsing %s (no valid cache of it yet)", source)
    array = np.ascontiguousarray(parse())
    for place in places:
        try:
            if place.parent != source.parent:
                place.parent.mkdir(parents=True, exist_ok=True)
            if not _is_writable_dir(place.parent):
                continue
            _save_cache(place, array, source.name, sha256)
            break
        except OSError:
            continue
    else:
        warnings.warn(
            f"Could not cache parsed {source.name} in {places[0].parent} or "
            f"{places[1].parent}; loading will stay slow.",
            stacklevel=4,
        )
    array.flags.writeable = False  # the same contract as a memory-mapped hit
    return array


def _sidecar(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


class _HashingWriter:
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out: BinaryIO):
        self.out, self.digest, self.size = out, hashlib.sha256(), 0

    def write(self, chunk: bytes) -> int:
        self.digest.update(chunk)
        self.size += memoryview(chunk).nbytes
        return self.out.write(chunk)


def _save_cache(place: Path, array: np.ndarray, source: str, sha256: str) -> None:
    """Write `array` to `place` atomically, then its sidecar: a crash in between
    leaves a cache without a sidecar, which is never trusted."""
    hashing: list[_HashingWriter] = []

    def write_npy(f: BinaryIO) -> None:
        hashing.append(_HashingWriter(f))
        np.save(hashing[0], array, allow_pickle=False)

    files.atomic_write(place, write_npy)
    meta = {
        "source": source,
        "source_sha256": sha256,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "bytes": hashing[0].size,
        "sha256": hashing[0].digest.hexdigest(),
    }
    text = (json.dumps(meta) + "\n").encode()
    files.atomic_write(_sidecar(place), lambda f: f.write(text))


def _load_cache(place: Path, sha256: str) -> np.ndarray | None:
    """The array cached at `place` if its sidecar vouches for it, else None.

    The sidecar must name the source's SHA-256, and the file must have exactly
    the recorded size and SHA-256 and hold a plain array of the recorded shape
    and dtype. The hash is taken from the same memory map the array is read
    from, so what was checked is what is returned.
    """
    try:
        meta = json.loads(_read_bounded(_sidecar(place), CACHE_META_MAX_BYTES, "file"))
        shape = tuple(int(n) for n in meta["shape"])
        dtype = np.dtype(str(meta["dtype"]))
        if meta["source_sha256"] != sha256 or dtype.hasobject:
            return None
        with _opened(place, "file") as f:
            if os.fstat(f.fileno()).st_size != meta["bytes"]:
                return None
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hashlib.sha256(mapped).hexdigest() != meta["sha256"]:
            return None
        header = io.BytesIO(mapped[: 1 << 16])
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(np.lib.format.read_magic(header))
        if read_header is None:
            return None
        got_shape, fortran, got_dtype = read_header(header)
        count = math.prod(got_shape)
        if (
            got_shape != shape
            or got_dtype != dtype
            or fortran
            or header.tell() + count * dtype.itemsize != len(mapped)
        ):
            return None
        array = np.frombuffer(mapped, dtype, count, offset=header.tell())
        return array.reshape(shape)
    except (DataError, OSError, ValueError, TypeError, KeyError, RecursionError):
        return None  # no sidecar, or either file damaged: rebuilt by the caller


def load_idx_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Load "mnist" or "fashion-mnist", downloading missing files (see `fetch`)."""
    source = _idx_source(name)
    folder = fetch(name, data_dir, progress)
    n_classes = len(source.class_names)
    arrays = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images, labels = folder / images_name, folder / labels_name
        x = _cached_parse(
            images, source.sha256[images_name], partial(read_idx, images, "images")
        )
        y = _cached_parse(
            labels, source.sha256[labels_name], partial(_read_labels, labels)
        )
        _check_pair(x, y, images, labels, n_classes)
        arrays[split] = (x, y)
    train_shape, test_shape = (arrays[s][0].shape[1:] for s in IDX_FILES)
    if train_shape != test_shape:
        raise DataError(
            f"{folder}: the training images are {'x'.join(map(str, train_shape))} "
            f"but the test images are {'x'.join(map(str, test_shape))}: the files "
            "do not belong to one dataset"
        )
    sums = "".join(f"{sha}  {f}\n" for f, sha in sorted(source.sha256.items()))
    return Dataset(
        *arrays["train"],
        *arrays["test"],
        class_names=source.class_names,
        name=name,
        checksum=hashlib.sha256(sums.encode()).hexdigest(),
    )


# ------------------------------------------------------------ sklearn digits


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/test split, stratified whenever the classes allow.

    When they do not (a class with one sample, or fewer test rows than classes),
    a seeded random split that leaves every class at least one training row.
    """
    train, test = _split_indices(y, test_fraction, seed)
    return x[train], y[train], x[test], y[test]


def _split_keeping_classes(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): ceil(n * test_fraction) test rows, or fewer if
    needed so that no class loses its last training row (a model cannot learn
    a class it never saw)."""
    classes, counts = np.unique(y, return_counts=True)
    left = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    n_test = min(math.ceil(len(y) * test_fraction), len(y) - len(classes))
    order = np.random.default_rng(seed).permutation(len(y))
    is_test = np.zeros(len(y), dtype=bool)
    taken = 0
    for i in order:
        if taken >= n_test:
            break
        if left[y[i]] > 1:
            left[y[i]] -= 1
            is_test[i] = True
            taken += 1
    return order[~is_test[order]], order[is_test[order]]


# ------------------------------------------------------------ validation split

# The one rule for holding out validation images, used by every path that trains
# (the CLI, the dashboard, sweeps, early stopping): the test set is touched only
# for the final score. MNIST and Fashion-MNIST hold out the last 5,000 of their
# 60,000 training images, as is customary for them; any other dataset holds out a
# stratified 10% of its training images, the same ones every time.
VALIDATION_LAST = {"mnist": 5000, "fashion-mnist": 5000}
VALIDATION_FRACTION = 0.1
VALIDATION_SPLIT_SEED = 0


class ValidationSplit(NamedTuple):
    """Indices into a dataset's training set: what trains and what validates.

    train, validation : int64 arrays, sorted and disjoint; together all of
        ``range(len(x_train))``. ``validation`` may be empty for a training set
        too small to spare an image from any class.
    rule : in words, which images validate ("the last 5,000 training images").
    """

    train: np.ndarray
    validation: np.ndarray
    rule: str


def validation_split(ds: Dataset) -> ValidationSplit:
    """The training images of ``ds`` held out for validation, by the one rule
    (``VALIDATION_LAST`` for MNIST and Fashion-MNIST, else a stratified
    ``VALIDATION_FRACTION``); never any of the test images."""
    n = len(ds.x_train)
    last = VALIDATION_LAST.get(ds.name)
    if last is not None and n > last:
        cut = n - last
        return ValidationSplit(
            np.arange(cut, dtype=np.int64),
            np.arange(cut, n, dtype=np.int64),
            f"the last {last:,} training images",
        )
    y = np.asarray(ds.y_train)
    train, val = _split_indices(y, VALIDATION_FRACTION, VALIDATION_SPLIT_SEED)
    percent = f"{VALIDATION_FRACTION:.0%}"
    return ValidationSplit(
        np.sort(train).astype(np.int64),
        np.sort(val).astype(np.int64),
        f"{len(val):,} training images ({percent}, stratified by class)",
    )


def _split_indices(
    y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (kept, held out) of a deterministic split of labels ``y``,
    stratified whenever the classes allow (see ``_split``)."""
    from sklearn.model_selection import train_test_split  # slow import: lazy

    rows = np.arange(len(y))
    try:
        kept, held = train_test_split(
            rows, test_size=fraction, random_state=seed, stratify=y
        )
    except ValueError:
        return _split_keeping_classes(y, fraction, seed)
    return kept, held


def load_sklearn_digits(
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """scikit-learn's bundled 1,797 8x8 digits, scaled to 0..255; works offline.

    Split 80/20, stratified, with `SPLIT_SEED`. `data_dir` and `progress` are
    ignored: nothing is read from disk but the copy inside scikit-learn.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255 / SKLEARN_DIGITS_MAX)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    checksum = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return Dataset(
        *_split(x, y, SKLEARN_TEST_FRACTION, SPLIT_SEED),
        class_names=DIGIT_NAMES,
        name="sklearn-digits",
        checksum=checksum,
    )


# ----------------------------------------------------------------------- CSV


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _cells(line: str) -> list[str]:
    """A line's cells, trimmed, with any quotes around them removed."""
    return [cell.strip().strip('"').strip() for cell in line.split(",")]


def _is_header(cells: Sequence[str]) -> bool:
    """A header has no numbers, or names a column "label" (pandas writes
    `label,0,1,...`); any other line mixing both is data with a bad cell."""
    return any(c.lower() == "label" for c in cells) or not any(map(_is_number, cells))


def _short(cell: str, limit: int = 24) -> str:
    return repr(cell if len(cell) <= limit else cell[:limit] + "...")


def _lines(text: str) -> list[str]:
    """Split on any newline convention (Windows, Unix, classic Mac)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _decode_csv(raw: bytes, path: str | Path) -> str:
    """UTF-8 text, a leading byte-order mark dropped; DataError naming the line
    of the first byte that is not UTF-8."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(
            f"{path} is UTF-16 text: save it as UTF-8 (or plain ASCII) and load it "
            "again"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        before = _lines(raw[: err.start].decode("utf-8-sig"))
        line = len(before)
        filled = [text for text in before[:-1] if text.strip()]
        if filled:
            header = _is_header(_cells(filled[0]))
            where = f"row {len(filled) + 1 - header} (line {line})"
        else:
            where = f"line {line}"
        byte = raw[err.start : err.start + 1]
        raise DataError(
            f"{path}: {where} is not UTF-8 text: byte 0x{byte.hex()} at character "
            f"{len(before[-1]) + 1} ({byte.decode('latin-1')!r} in Latin-1). Save "
            "the file as UTF-8 and load it again."
        ) from None


def _locate_bad_cell(
    rows: Sequence[str], line_numbers: np.ndarray, n_cols: int, first_line: int
) -> str:
    """Describe the first malformed row or cell, for an error message."""
    for r, text in enumerate(rows):
        where = f"row {r + 1} (line {line_numbers[r]})"
        cells = _cells(text)
        if len(cells) != n_cols:
            return (
                f"{where} has {plural(len(cells), 'column')}, not {n_cols} as on "
                f"line {first_line}"
            )
        for col, cell in enumerate(cells, start=1):
            if not _is_number(cell):
                return f"{where}, column {col} is {_short(cell)}, not a number"
    return "a row could not be parsed"


def _label_column(
    table: np.ndarray, header: list[str] | None, label: str, n_classes: int
) -> int:
    """Index of the label column: named "label" in a header, else first or last."""
    if label == "first":
        return 0
    if label == "last":
        return table.shape[1] - 1
    if header is not None:
        named = [i for i, h in enumerate(header) if h.lower() == "label"]
        if named:
            return named[0]

    ends = (0, table.shape[1] - 1)

    def looks_like_labels(col: int) -> bool:
        # Border pixels are often constant 0; a label column holds several classes.
        values = table[:, col]
        return bool(np.all(values == np.rint(values)) and np.unique(values).size > 1)

    def in_range(col: int) -> bool:
        return bool(table[:, col].min() >= 0 and table[:, col].max() < n_classes)

    labelish = [c for c in ends if looks_like_labels(c)]
    good = [c for c in labelish if in_range(c)]
    if good:
        return good[0]
    for c in ends:  # one class only: refused by the caller with that reason
        values = table[:, c]
        if in_range(c) and np.all(values == values[0]) and values[0] == int(values[0]):
            return c
    # Integer classes out of range: return the column so the caller reports them.
    return labelish[0] if labelish else -1


def load_csv(
    path: str | os.PathLike[str],
    *,
    n_classes: int = 10,
    label: str = "auto",
    test_fraction: float = CSV_TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> Dataset:
    """Load a CSV of flattened square images, one image per row, plus a label.

    Layouts: Kaggle's "Digit Recognizer" (`label,pixel0,...,pixel783` header), or
    headerless with the label first or last. `label` is "auto", "first" or "last";
    "auto" uses a column named "label", else whichever end column holds integers
    in 0..n_classes-1. Pixels are integers 0..255, or floats 0..1 (scaled by 255).
    The side of the images is sqrt(columns - 1), at most `CSV_MAX_SIDE`. The text
    is UTF-8 (a byte-order mark is dropped); blank lines are skipped. At least
    `CSV_MIN_ROWS` rows and 2 different labels are needed. The split is
    deterministic: `test_fraction` of the rows, stratified when possible, with
    `seed`; every label keeps at least one training row.
    Messages name a row by its data row number and its line in the file.
    """
    path = Path(path).expanduser()
    raw = _read_bounded(path, CSV_MAX_BYTES, "CSV file")
    return parse_csv(
        raw, str(path), n_classes=n_classes, label=label,
        test_fraction=test_fraction, seed=seed,
    )  # fmt: skip


def parse_csv(
    raw: bytes,
    name: str,
    *,
    n_classes: int = 10,
    label: str = "auto",
    test_fraction: float = CSV_TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> Dataset:
    """``load_csv`` on bytes already read (an upload): ``name`` names the source
    in messages and is the dataset's name."""
    if label not in LABEL_POSITIONS:
        raise ConfigError(f"label={label!r}; use one of {', '.join(LABEL_POSITIONS)}")
    if n_classes < 2:
        raise ConfigError(f"n_classes={n_classes}; a classifier needs at least 2")
    if len(raw) > CSV_MAX_BYTES:
        raise DataError(
            f"{name} is larger than {CSV_MAX_BYTES / 2**20:.0f} MB, the most a CSV "
            "file may hold here: keep fewer rows or split it"
        )
    path = name  # what the messages below call the source
    checksum = hashlib.sha256(raw).hexdigest()  # of exactly the bytes parsed
    lines = _lines(_decode_csv(raw, path))
    del raw  # the rows below are all that is needed: keep the peak memory down
    filled = [i for i, text in enumerate(lines) if text.strip()]
    need = (
        f"it needs at least {CSV_MIN_ROWS} (one image per row, with at least 2 "
        "different labels) to train and test on"
    )
    if not filled:
        raise DataError(f"{path} is empty: {need}")
    first = _cells(lines[filled[0]])
    header = first if _is_header(first) else None
    n_cols = len(first)
    side = math.isqrt(max(n_cols - 1, 0))
    if n_cols < 2 or side * side != n_cols - 1:
        why = (
            f"= 1 label + {n_cols - 1} pixels, and {n_cols - 1} is not a perfect square"
            if n_cols > 1
            else "and no pixels"
        )
        raise DataError(
            f"{path}: line {filled[0] + 1} has {plural(n_cols, 'column')} {why}: "
            "a row is 1 label + the pixels of a square image, e.g. 785 columns "
            "(28x28) or 401 (20x20)"
        )
    if side > CSV_MAX_SIDE:
        raise DataError(
            f"{path}: rows of {n_cols} columns are {side}x{side} images; at most "
            f"{CSV_MAX_SIDE}x{CSV_MAX_SIDE} are accepted. Shrink the images first."
        )
    data_lines = filled[1:] if header else filled
    if len(data_lines) < CSV_MIN_ROWS:
        rows_text = plural(len(data_lines), "row")
        has = f"has a header but {rows_text}" if header else f"has {rows_text}"
        raise DataError(f"{path} {has} of data: {need}")
    line_numbers = np.array(data_lines) + 1
    rows = [lines[i] for i in data_lines]
    del lines
    try:
        table = np.loadtxt(
            rows,
            delimiter=",",
            # Quote handling slows parsing by a third: only when there are quotes.
            quotechar='"' if any('"' in text for text in rows) else None,
            comments=None,
            dtype=np.float64,
            ndmin=2,
        )
        consistent = table.shape[1] == n_cols  # else every row differs from line 1
    except ValueError:
        consistent = False
    if not consistent:
        where = _locate_bad_cell(rows, line_numbers, n_cols, filled[0] + 1)
        raise DataError(f"{path}: {where}.")
    del rows

    def where(row: int) -> str:
        return f"row {row + 1} (line {line_numbers[row]})"

    bad = np.argwhere(~np.isfinite(table))
    if bad.size:
        row, col = bad[0]
        raise DataError(
            f"{path}: {where(row)}, column {col + 1} is {table[row, col]}, not a "
            "finite number"
        )

    col = _label_column(table, header, label, n_classes)
    if col < 0:
        raise DataError(
            f"{path}: found no label column: neither the first nor the last column "
            f"holds integer classes 0..{n_classes - 1} with at least 2 different "
            "values. Put the labels first or last (or in a column named label); "
            "training needs images of at least 2 different labels."
        )
    labels = table[:, col]
    bad_rows = np.flatnonzero(
        (labels != np.rint(labels)) | (labels < 0) | (labels >= n_classes)
    )
    if bad_rows.size:
        r = bad_rows[0]
        raise DataError(
            f"{path}: label {labels[r]:g} in {where(r)}, column {col + 1} is not "
            f"an integer class in 0..{n_classes - 1} "
            f"({plural(bad_rows.size, 'row')} with bad labels)"
        )
    y = labels.astype(np.int64)
    pixels = np.delete(table, col, axis=1)
    del table
    x = _pixels_to_uint8(pixels, path, where).reshape(-1, side, side)
    classes = np.unique(y)
    if classes.size < 2:
        raise DataError(
            f"{path}: every row has label {classes[0]}, but a classifier needs "
            "images of at least 2 different labels: add rows of other classes"
        )
    if len(y) <= classes.size:
        raise DataError(
            f"{path} has {len(y)} rows and {classes.size} different labels: it "
            f"needs at least {classes.size + 1} rows, so that training sees every "
            "label and 1 image is left to test on"
        )
    return Dataset(
        *_split(x, y, test_fraction, seed),
        class_names=tuple(str(c) for c in range(n_classes)),
        name=name,
        checksum=checksum,
    )


def _pixels_to_uint8(
    pixels: np.ndarray, path: str | Path, where: Callable[[int], str]
) -> np.ndarray:
    """Floats in 0..1 (or any non-integer data) scale by 255; else ints 0..255."""
    integral = bool(np.all(pixels == np.rint(pixels)))
    if not integral or pixels.max() <= 1:
        low, high = -FLOAT_PIXEL_SLACK, 1 + FLOAT_PIXEL_SLACK
        scale, unit = 255.0, "floats in 0..1"
    else:
        low, high = 0, 255
        scale, unit = 1.0, "integers in 0..255"
    outside = np.argwhere((pixels < low) | (pixels > high))
    if outside.size:
        row, col = outside[0]
        raise DataError(
            f"{path}: pixel value {pixels[row, col]:g} in {where(row)} is out of "
            f"range; pixels must be {unit}"
        )
    return np.rint(np.clip(pixels * scale, 0, 255)).astype(np.uint8)


# ----------------------------------------------------------------- registry

Loader = Callable[[Path, Progress | None], Dataset]

DATASETS: dict[str, Loader] = {
    **{name: partial(load_idx_dataset, name) for name in IDX_SOURCES},
    "sklearn-digits": load_sklearn_digits,
}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Load dataset `name`: a key of `DATASETS` or a path ending in ".csv".

    `data_dir` overrides `data_dir()`; `progress(done, total, filename)` is called
    while downloading. Raises DataError (DownloadError if offline) with a message
    that names the file and what to do.
    """
    if name in DATASETS:
        return DATASETS[name](_root(data_dir), progress)
    if str(name).lower().endswith(".csv"):
        return load_csv(name)
    valid = ", ".join(DATASETS)
    raise DataError(
        f"Unknown dataset {name!r}. Valid names: {valid}, or a path to a .csv file."
    )
