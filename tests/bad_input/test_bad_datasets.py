"""Bad dataset files: MNIST's IDX gzip files, and the `.npy` caches parsed from them.

A small MNIST (40 training and 10 test images of 28x28, written as the four real
IDX gzip files) lives in a temporary `$DIGITS_DATA_DIR`, with the network cut off
(the mirror is a closed port). Two kinds of IDX cases go through
``digits train --dataset mnist``:

- files that fail the pinned SHA-256, a missing file, or something that is not a
  file where one should be: the download code's path;
- files that are malformed but match the SHA-256 pinned for them (the test pins
  the sums of exactly the bytes it wrote, as a mirror publishing broken files
  would): the parser's path, which must name the file and the fault.

Each must end in one clear line, with every gzip file kept (a corrupt one moved
aside, never deleted) and no run saved.

The cache cases damage the `.npy` cache of parsed arrays or its JSON sidecar, in
every way a disk, a crash or a stray program could, and load through
``load_dataset``: the data must be the genuine data, never the damaged cache's, and
the cache must be rebuilt, so that the next load is served from it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from catalogue import FAILURE, assert_clean_error

from digits import data

ROOT = Path(__file__).resolve().parents[2]
N_TRAIN, N_TEST = 40, 10
TRAIN_IMAGES, TRAIN_LABELS = data.IDX_FILES["train"]
TEST_IMAGES, TEST_LABELS = data.IDX_FILES["test"]
ALL_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
MAGIC = {"images": 2051, "labels": 2049}


def idx(kind: str, array: np.ndarray, magic: int | None = None) -> bytes:
    """The raw IDX bytes of a uint8 `array`: magic, dimensions, then the data."""
    header = struct.pack(f">I{array.ndim}I", magic or MAGIC[kind], *array.shape)
    return header + array.astype(np.uint8).tobytes()


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


@pytest.fixture(scope="module")
def genuine() -> dict[str, np.ndarray]:
    """The small MNIST's arrays, keyed by the IDX file that holds each."""
    rng = np.random.default_rng(0)
    return {
        TRAIN_IMAGES: rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: np.arange(N_TRAIN, dtype=np.uint8) % 10,
        TEST_IMAGES: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        TEST_LABELS: np.arange(N_TEST, dtype=np.uint8) % 10,
    }


def kind_of(name: str) -> str:
    return "images" if "images" in name else "labels"


def pin(monkeypatch, folder: Path) -> None:
    """Pin the SHA-256 of the four files now in `folder` as MNIST's."""
    sums = {name: data._sha256_file(folder / name) for name in ALL_FILES}
    source = data.IdxSource(folder="mnist", class_names=data.DIGIT_NAMES, sha256=sums)
    monkeypatch.setitem(data.IDX_SOURCES, "mnist", source)


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch, genuine) -> Path:
    """A writable data dir holding the small MNIST, pinned, offline."""
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name, array in genuine.items():
        (folder / name).write_bytes(gz(idx(kind_of(name), array)))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder.parent))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(data.MIRRORS, "mnist", [f"http://127.0.0.1:{port}/"])
    pin(monkeypatch, folder)
    return folder


def gzip_files(folder: Path) -> dict[str, bytes]:
    """Every file but the caches, with its bytes: what must never be lost."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink() and ".npy" not in p.name
    }


def train(cli):
    return cli("train", "--model", "mlp", "--dataset", "mnist", "--epochs", "1")


def assert_nothing_saved(runs: Path) -> None:
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


# -- malformed IDX files whose SHA-256 is pinned: the parser's messages --------------


def _rewrite(name: str, make_raw):
    """A case that replaces file `name` by gz(make_raw(genuine array))."""

    def change(folder: Path, genuine: dict[str, np.ndarray]) -> None:
        (folder / name).write_bytes(make_raw(genuine[name]))

    return change


def _gz_of(name: str, make):
    return _rewrite(name, lambda a: gz(make(a)))


def _bomb(_array) -> bytes:
    """1 MB more zeros than IDX_MAX_BYTES, as gzip members of 1 MB each (one
    file may hold many members): 257 KB on disk."""
    member = gzip.compress(bytes(1 << 20), mtime=0)
    return member * (data.IDX_MAX_BYTES // (1 << 20) + 1)


def _flip_inside(raw: bytes) -> bytes:
    body = bytearray(raw)
    body[len(body) // 2] ^= 0xFF
    return bytes(body)


def _little_endian(a: np.ndarray) -> bytes:
    return struct.pack("<4I", 2051, *a.shape) + a.tobytes()


def _test_images_20x20(a: np.ndarray) -> bytes:
    return idx("images", a[:, 4:24, 4:24])


def _label_12(a: np.ndarray) -> bytes:
    bad = a.copy()
    bad[7] = 12
    return idx("labels", bad)


PINNED = [
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: idx("images", a, magic=2049)),
        [TRAIN_IMAGES, "wrong magic number 2049, expected 2051"],
        id="images-with-the-labels-magic",
    ),
    pytest.param(
        _gz_of(TEST_LABELS, lambda a: idx("labels", a, magic=2051)),
        [TEST_LABELS, "wrong magic number 2051, expected 2049"],
        id="labels-with-the-images-magic",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, _little_endian),
        [TRAIN_IMAGES, "wrong magic number 50855936"],
        id="little-endian-header",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: b""),
        [TRAIN_IMAGES, "only 0 bytes", "too short for an IDX images header"],
        id="empty-idx",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: idx("images", a)[:10]),
        [TRAIN_IMAGES, "only 10 bytes", "too short"],
        id="header-cut-short",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: idx("images", a)[:-100]),
        [TRAIN_IMAGES, "header promises 40x28x28 images", "truncated or corrupt"],
        id="pixels-cut-short",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: idx("images", a) + b"\0"),
        [TRAIN_IMAGES, "header promises 40x28x28 images", "31377 bytes"],
        id="one-byte-too-many",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: struct.pack(">4I", 2051, 2**32 - 1, 28, 28)),
        [TRAIN_IMAGES, "header promises 4294967295x28x28 images"],
        id="header-promises-4-billion-images",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: idx("images", a[:0])),
        [TRAIN_IMAGES, "holds no images"],
        id="zero-images",
    ),
    pytest.param(
        _gz_of(TRAIN_IMAGES, lambda a: struct.pack(">4I", 2051, 40, 0, 28)),
        [TRAIN_IMAGES, "image size 0x28 is empty"],
        id="zero-pixel-rows",
    ),
    pytest.param(
        _gz_of(TRAIN_LABELS, lambda a: idx("labels", a[:-1])),
        [TRAIN_IMAGES, "has 40 images but", TRAIN_LABELS, "has 39 labels"],
        id="one-label-missing",
    ),
    pytest.param(
        _gz_of(TRAIN_LABELS, _label_12),
        [TRAIN_LABELS, "label 12 at index 7 is outside 0..9"],
        id="label-12",
    ),
    pytest.param(
        _gz_of(TEST_IMAGES, _test_images_20x20),
        ["training images are 28x28 but the test images are 20x20"],
        id="test-images-of-another-size",
    ),
    pytest.param(
        _rewrite(TRAIN_IMAGES, lambda a: _flip_inside(gz(idx("images", a)))),
        [TRAIN_IMAGES, "not a valid gzip file", "truncated or corrupt"],
        id="gzip-stream-corrupt",
    ),
    pytest.param(
        _rewrite(TRAIN_IMAGES, lambda a: gz(idx("images", a))[:-20]),
        [TRAIN_IMAGES, "not a valid gzip file"],
        id="gzip-stream-cut-short",
    ),
    pytest.param(
        _rewrite(TRAIN_IMAGES, lambda a: idx("images", a)),
        [TRAIN_IMAGES, "not a valid gzip file"],
        id="not-gzipped-at-all",
    ),
    pytest.param(
        _rewrite(TRAIN_LABELS, _bomb),
        [TRAIN_LABELS, "unpacks to more than 256 MB"],
        id="gzip-bomb",
    ),
]


@pytest.mark.parametrize(("change", "fragments"), PINNED)
def test_a_malformed_idx_file_is_named_with_its_fault(
    cli, runs, mnist_dir, genuine, monkeypatch, change, fragments
):
    change(mnist_dir, genuine)
    pin(monkeypatch, mnist_dir)
    before = gzip_files(mnist_dir)
    assert_clean_error(train(cli), *fragments, code=FAILURE)
    assert gzip_files(mnist_dir) == before
    assert_nothing_saved(runs)


def test_the_small_mnist_itself_trains(cli, runs, mnist_dir, genuine):
    """The control for the cases above: untouched, the same files train."""
    result = train(cli)
    assert result.code == 0, result.err
    assert "Saved run" in result.out
    ds = data.load_dataset("mnist")
    assert np.array_equal(ds.x_train, genuine[TRAIN_IMAGES])
    assert np.array_equal(ds.y_test, genuine[TEST_LABELS])


# -- files that do not match the real pins, or are not files -------------------------


def test_a_checksum_mismatch_offline_keeps_the_file_aside(cli, runs, mnist_dir):
    labels = mnist_dir / TRAIN_LABELS
    damaged = _flip_inside(labels.read_bytes())
    labels.write_bytes(damaged)
    line = assert_clean_error(
        train(cli),
        str(labels),
        "checksum mismatch",
        "moved aside",
        "Could not download",
        code=FAILURE,
    )
    aside = list(mnist_dir.glob(f"{TRAIN_LABELS}.corrupt-*"))
    assert len(aside) == 1 and aside[0].name in line
    assert aside[0].read_bytes() == damaged
    assert_nothing_saved(runs)


def test_a_missing_file_offline_says_where_to_put_it(cli, runs, mnist_dir):
    (mnist_dir / TEST_LABELS).unlink()
    before = gzip_files(mnist_dir)
    assert_clean_error(
        train(cli),
        f"Could not download {TEST_LABELS}",
        str(mnist_dir),
        "offline",
        code=FAILURE,
    )
    assert gzip_files(mnist_dir) == before
    assert_nothing_saved(runs)


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "kept.txt").write_text("kept")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(_directory, "a directory", id="a-directory"),
        pytest.param(
            lambda p: p.symlink_to("/dev/zero"), "a character device", id="dev-zero"
        ),
        pytest.param(os.mkfifo, "a named pipe (FIFO)", id="a-fifo"),
        pytest.param(
            lambda p: p.symlink_to(p.parent / "nowhere"),
            "a broken symbolic link",
            id="a-broken-symlink",
        ),
    ],
)
def test_something_that_is_not_a_file_in_place_of_an_idx_file(
    cli, runs, mnist_dir, make, kind
):
    target = mnist_dir / TRAIN_IMAGES
    target.unlink()
    make(target)
    before = gzip_files(mnist_dir)
    assert_clean_error(
        train(cli),
        str(target),
        f"is {kind}, not the IDX file",
        "move it away",
        code=FAILURE,
    )
    assert gzip_files(mnist_dir) == before
    if target.is_dir():
        assert (target / "kept.txt").read_text() == "kept"
    assert_nothing_saved(runs)


# -- parsed-array caches: damaged ones are rebuilt, never served ---------------------


def cache_of(folder: Path, name: str) -> tuple[Path, Path]:
    """The `.npy` cache of IDX file `name` in `folder`, and its sidecar."""
    sha = data.IDX_SOURCES["mnist"].sha256[name]
    npy = folder / f"{name.removesuffix('.gz')}.{sha[:16]}.npy"
    return npy, npy.with_name(npy.name + ".json")


def assert_genuine(ds: data.Dataset, genuine: dict[str, np.ndarray]) -> None:
    assert np.array_equal(ds.x_train, genuine[TRAIN_IMAGES])
    assert np.array_equal(ds.y_train, genuine[TRAIN_LABELS])
    assert np.array_equal(ds.x_test, genuine[TEST_IMAGES])
    assert np.array_equal(ds.y_test, genuine[TEST_LABELS])


def assert_served_from_caches(monkeypatch, genuine) -> None:
    """The next load parses nothing: every cache it reads is sound."""

    def parse_again(*args, **kwargs):
        raise AssertionError("an IDX file was parsed again: a cache was not used")

    with monkeypatch.context() as mp:
        mp.setattr(data, "read_idx", parse_again)
        assert_genuine(data.load_dataset("mnist"), genuine)


def _rewrite_sidecar(change):
    def apply(npy: Path, sidecar: Path, other: tuple[Path, Path]) -> None:
        meta = json.loads(sidecar.read_text())
        change(meta)
        sidecar.write_text(json.dumps(meta))

    return apply


def _consistent_sidecar(npy: Path, sidecar: Path, **fields) -> None:
    """Make `sidecar` agree with whatever `npy` now holds (a forged-but-honest
    record of a file written by someone else)."""
    meta = json.loads(sidecar.read_text())
    body = npy.read_bytes()
    meta |= {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()} | fields
    sidecar.write_text(json.dumps(meta))


def _flip_last_pixel(npy, sidecar, other):
    body = bytearray(npy.read_bytes())
    body[-1] ^= 0x01
    npy.write_bytes(body)


def _transpose_header(npy, sidecar, other):
    npy.write_bytes(npy.read_bytes().replace(b"(40, 28, 28)", b"(28, 40, 28)"))


def _truncate(npy, sidecar, other):
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])


def _empty(npy, sidecar, other):
    npy.write_bytes(b"")


def _append(npy, sidecar, other):
    npy.write_bytes(npy.read_bytes() + b"\0" * 64)


def _other_array_kept_sidecar(npy, sidecar, other):
    shutil.copy(other[0], npy)


def _other_pair(npy, sidecar, other):
    shutil.copy(other[0], npy)
    shutil.copy(other[1], sidecar)


def _no_sidecar(npy, sidecar, other):
    sidecar.unlink()  # as a cache written before sidecars existed


def _no_sidecar_and_wrong_data(npy, sidecar, other):
    sidecar.unlink()
    _flip_last_pixel(npy, sidecar, other)


def _sidecar_not_json(npy, sidecar, other):
    sidecar.write_bytes(b"\x00not json{")


def _sidecar_a_list(npy, sidecar, other):
    sidecar.write_text("[1, 2, 3]")


def _sidecar_too_large(npy, sidecar, other):
    meta = json.loads(sidecar.read_text())
    meta["padding"] = " " * 10_000
    sidecar.write_text(json.dumps(meta))


def _sidecar_deeply_nested(npy, sidecar, other):
    sidecar.write_text("[" * 3000)


def _pickled_objects(npy, sidecar, other):
    marker = npy.parent / "PICKLE-RAN"
    payload = np.empty(1, dtype=object)
    payload[0] = _Planted(str(marker))
    with npy.open("wb") as f:
        np.save(f, payload, allow_pickle=True)
    _consistent_sidecar(npy, sidecar, shape=[1], dtype="|O")


def _fortran_order(npy, sidecar, other):
    array = np.load(npy)
    with npy.open("wb") as f:
        np.save(f, np.asfortranarray(array))
    _consistent_sidecar(npy, sidecar)


def _cache_is_a_directory(npy, sidecar, other):
    npy.unlink()
    npy.mkdir()
    (npy / "kept.txt").write_text("kept")


def _cache_is_dev_zero(npy, sidecar, other):
    npy.unlink()
    npy.symlink_to("/dev/zero")


class _Planted:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


CACHE_CASES = [
    pytest.param(TRAIN_IMAGES, _flip_last_pixel, id="one-pixel-flipped"),
    pytest.param(TRAIN_IMAGES, _transpose_header, id="shape-in-header-changed"),
    pytest.param(TRAIN_IMAGES, _truncate, id="cut-in-half"),
    pytest.param(TRAIN_LABELS, _empty, id="empty-file"),
    pytest.param(TRAIN_IMAGES, _append, id="bytes-appended"),
    pytest.param(
        TRAIN_IMAGES, _other_array_kept_sidecar, id="another-array-under-its-name"
    ),
    pytest.param(TRAIN_LABELS, _other_pair, id="another-cache-and-sidecar-swapped-in"),
    pytest.param(TRAIN_IMAGES, _no_sidecar, id="no-sidecar"),
    pytest.param(
        TRAIN_LABELS, _no_sidecar_and_wrong_data, id="no-sidecar-and-wrong-labels"
    ),
    pytest.param(TRAIN_IMAGES, _sidecar_not_json, id="sidecar-not-json"),
    pytest.param(TRAIN_IMAGES, _sidecar_a_list, id="sidecar-a-list"),
    pytest.param(
        TRAIN_IMAGES,
        _rewrite_sidecar(lambda m: m.update(shape="x")),
        id="sidecar-shape-a-string",
    ),
    pytest.param(
        TRAIN_IMAGES,
        _rewrite_sidecar(lambda m: m.update(source_sha256="0" * 64)),
        id="sidecar-of-another-source",
    ),
    pytest.param(
        TRAIN_IMAGES,
        _rewrite_sidecar(lambda m: m.update(sha256="f" * 64)),
        id="sidecar-hash-wrong",
    ),
    pytest.param(TRAIN_IMAGES, _sidecar_too_large, id="sidecar-over-4-kb"),
    pytest.param(TRAIN_IMAGES, _sidecar_deeply_nested, id="sidecar-3000-deep"),
    pytest.param(TRAIN_IMAGES, _pickled_objects, id="pickled-objects"),
    pytest.param(TRAIN_IMAGES, _fortran_order, id="fortran-order"),
    pytest.param(TRAIN_IMAGES, _cache_is_a_directory, id="cache-is-a-directory"),
    pytest.param(TRAIN_LABELS, _cache_is_dev_zero, id="cache-is-dev-zero"),
]


@pytest.mark.parametrize(("name", "damage"), CACHE_CASES)
def test_a_damaged_cache_is_rebuilt_and_never_served(
    mnist_dir, genuine, monkeypatch, name, damage
):
    assert_genuine(data.load_dataset("mnist"), genuine)  # builds the caches
    npy, sidecar = cache_of(mnist_dir, name)
    assert npy.is_file() and sidecar.is_file()
    other = TEST_IMAGES if name == TRAIN_IMAGES else TEST_LABELS
    damage(npy, sidecar, cache_of(mnist_dir, other))
    before = gzip_files(mnist_dir)

    assert_genuine(data.load_dataset("mnist"), genuine)
    assert_served_from_caches(monkeypatch, genuine)
    assert gzip_files(mnist_dir) == before
    assert not (mnist_dir / "PICKLE-RAN").exists()
    if npy.is_dir():  # not replaceable: the rebuilt cache went to the user's
        assert (npy / "kept.txt").read_text() == "kept"
        assert cache_of(data.npy_cache_dir(), name)[0].is_file()


def test_a_damaged_per_user_cache_of_a_read_only_data_dir_is_rebuilt(
    mnist_dir, genuine, monkeypatch
):
    mnist_dir.chmod(0o555)
    try:
        assert_genuine(data.load_dataset("mnist"), genuine)
        npy, _ = cache_of(data.npy_cache_dir(), TRAIN_IMAGES)
        _flip_last_pixel(npy, None, None)
        assert_genuine(data.load_dataset("mnist"), genuine)
        assert_served_from_caches(monkeypatch, genuine)
        assert not list(mnist_dir.glob("*.npy*"))  # the data dir stayed untouched
    finally:
        mnist_dir.chmod(0o755)


def test_a_fifo_as_the_cache_is_skipped_without_blocking(mnist_dir, genuine):
    # In a child process: a cache opened for reading as a FIFO would block forever.
    assert_genuine(data.load_dataset("mnist"), genuine)  # caches and sidecars
    npy, sidecar = cache_of(mnist_dir, TRAIN_IMAGES)
    npy.unlink()
    os.mkfifo(npy)
    assert sidecar.is_file()
    pins = mnist_dir.parent / "pins.json"  # the child pins the same sums
    pins.write_text(json.dumps(data.IDX_SOURCES["mnist"].sha256))
    code = (
        "import json, sys, numpy as np\n"
        "from digits import data\n"
        f"sums = json.loads(open({str(pins)!r}).read())\n"
        "data.IDX_SOURCES['mnist'] = data.IdxSource('mnist', data.DIGIT_NAMES, sums)\n"
        "data.MIRRORS['mnist'] = []\n"
        "np.save(sys.stdout.buffer, data.load_dataset('mnist').x_train)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr.decode()
    assert np.array_equal(np.load(io.BytesIO(done.stdout)), genuine[TRAIN_IMAGES])
    assert npy.is_file()  # the FIFO was replaced by a sound cache


def test_mnist_loads_from_its_checked_cache_in_well_under_a_second(
    tmp_path, monkeypatch
):
    """The real MNIST: checking the caches costs tens of milliseconds."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data.load_dataset("mnist")  # build or check the caches once
    start = time.perf_counter()
    ds = data.load_dataset("mnist")
    elapsed = time.perf_counter() - start
    assert ds.x_train.shape == (60000, 28, 28)
    assert elapsed < 0.5, f"a load from the cache took {elapsed:.2f} s"
