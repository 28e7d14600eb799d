"""Tests for digits.data: real MNIST files, a real local HTTP mirror, bad inputs.

The MNIST and Fashion-MNIST files come from $DIGITS_DATA_DIR (CI: the read-only
../shared/data); without it they are downloaded to ~/.cache/digits. Downloads are
tested against a ThreadingHTTPServer on 127.0.0.1 serving those same files, some
of its routes broken on purpose. Parsed-array caches go to a temporary
$XDG_CACHE_HOME so the tests never touch the user's cache.
"""

import gzip
import hashlib
import shutil
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from digits import data
from digits.errors import DataError, DownloadError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_FILES = sorted(data.IDX_SOURCES["mnist"].sha256)


@pytest.fixture(scope="module", autouse=True)
def _private_npy_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield


@pytest.fixture(scope="module")
def mnist():
    return data.load_dataset("mnist")


@pytest.fixture(scope="module")
def mnist_folder(mnist) -> Path:
    """The folder holding the four verified MNIST gzip files."""
    return data.data_dir() / "mnist"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to prove nothing was lost."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------ real datasets


def test_mnist_has_the_real_shapes_labels_and_loads_fast_the_second_time(mnist):
    assert mnist.x_train.shape == (60000, 28, 28)
    assert mnist.x_test.shape == (10000, 28, 28)
    assert mnist.x_train.dtype == mnist.x_test.dtype == np.uint8
    assert mnist.y_train.dtype == mnist.y_test.dtype == np.int64
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.y_test, minlength=10).sum() == 10000
    assert mnist.class_names == tuple("0123456789")
    assert mnist.name == "mnist"
    assert len(mnist.checksum) == 64

    start = time.perf_counter()
    again = data.load_dataset("mnist")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"second load took {elapsed:.2f} s"
    assert np.array_equal(again.x_train, mnist.x_train)
    assert np.array_equal(again.y_test, mnist.y_test)
    assert again.checksum == mnist.checksum


def test_read_only_data_dir_is_left_alone_and_cache_goes_per_user(
    mnist, mnist_folder, tmp_path
):
    folder = tmp_path / "ro" / "mnist"
    folder.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mnist_folder / name, folder)
    before = snapshot(folder)
    folder.chmod(0o555)
    try:
        ds = data.load_dataset("mnist", data_dir=tmp_path / "ro")
    finally:
        folder.chmod(0o755)
    assert snapshot(folder) == before
    assert np.array_equal(ds.x_test, mnist.x_test)
    for name, sha in data.IDX_SOURCES["mnist"].sha256.items():
        stem = name.removesuffix(".gz")
        assert (data.npy_cache_dir() / f"{stem}.{sha[:16]}.npy").is_file()


def test_fashion_mnist_loads_with_its_class_names():
    ds = data.load_dataset("fashion-mnist")
    assert ds.class_names == (
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
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


def test_sklearn_digits_split_is_deterministic_and_stratified():
    a = data.load_dataset("sklearn-digits")
    b = data.load_dataset("sklearn-digits")
    assert a.x_train.shape == (1437, 8, 8) and a.x_test.shape == (360, 8, 8)
    assert a.x_train.dtype == np.uint8 and a.x_train.max() == 255
    for left, right in zip(a[:4], b[:4], strict=True):
        assert np.array_equal(left, right)
    per_class = np.bincount(a.y_train) + np.bincount(a.y_test)
    assert np.all(np.abs(np.bincount(a.y_test) / per_class - 0.2) < 0.02)


def test_unknown_dataset_name_lists_the_valid_ones():
    with pytest.raises(DataError, match="'emnist'") as err:
        data.load_dataset("emnist")
    for name in ("mnist", "fashion-mnist", "sklearn-digits", ".csv"):
        assert name in str(err.value)


# ------------------------------------------------------- downloads, for real


class _MirrorHandler(BaseHTTPRequestHandler):
    """GET /<mode>/<file>: serve a shared MNIST file, well or badly."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self):
        _, mode, name = self.path.split("/", 2)
        body = self.files.get(name)
        if body is None or mode == "missing":
            self.send_error(404)
            return
        if mode in ("endless", "huge"):
            self.send_oversized(mode)
            return
        half = len(body) // 2
        sent, length = {
            "ok": (body, len(body)),
            "truncated": (body[:half], half),  # honest length, short file
            "corrupt": (body[:half] + bytes([body[half] ^ 1]) + body[half + 1 :], None),
            "cut": (body[:half], len(body)),  # hangs up mid-body
        }[mode]
        self.send_response(200)
        self.send_header("Content-Length", str(length or len(sent)))
        self.end_headers()
        try:
            self.wfile.write(sent)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the download under test gave up first, as some tests make it
        self.close_connection = True

    def send_oversized(self, mode: str) -> None:
        """ "huge": a Content-Length of 1 TB; "endless": zeros until the client
        hangs up, with no Content-Length (HTTP/1.0 reads to the close)."""
        self.send_response(200)
        if mode == "huge":
            self.send_header("Content-Length", str(10**12))
        self.end_headers()
        chunk = bytes(1 << 20)
        try:
            while mode == "endless":
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass  # keep pytest output clean


@pytest.fixture(scope="module")
def mirror(mnist_folder):
    """Base URL of a local server holding the real MNIST files."""
    _MirrorHandler.files = {n: (mnist_folder / n).read_bytes() for n in MNIST_FILES}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def assert_pinned(folder: Path):
    """Exactly the four MNIST files, each matching its pinned SHA-256."""
    assert sorted(p.name for p in folder.iterdir()) == MNIST_FILES
    for name in MNIST_FILES:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert digest == data.IDX_SOURCES["mnist"].sha256[name]


def test_download_skips_a_404_mirror_and_loads_through_load_dataset(
    mirror, mnist, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # a cold cache
    monkeypatch.setitem(data.MIRRORS, "mnist", [f"{mirror}/missing/", f"{mirror}/ok/"])
    calls = []
    ds = data.load_dataset(
        "mnist", data_dir=tmp_path / "data", progress=lambda *a: calls.append(a)
    )
    assert np.array_equal(ds.x_train, mnist.x_train)
    assert np.array_equal(ds.y_test, mnist.y_test)
    assert ds.checksum == mnist.checksum
    folder = tmp_path / "data" / "mnist"
    # A writable data dir holds the parsed cache (with its sidecar) beside the
    # gzip files, and nothing else: no partial downloads, no temp files.
    sha = data.IDX_SOURCES["mnist"].sha256
    npy = [f"{n.removesuffix('.gz')}.{sha[n][:16]}.npy" for n in MNIST_FILES]
    sidecars = [f"{name}.json" for name in npy]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        MNIST_FILES + npy + sidecars
    )
    assert not (tmp_path / "xdg").exists()
    for name in MNIST_FILES:
        size = (folder / name).stat().st_size
        last = [c for c in calls if c[2] == name][-1]
        assert last == (size, size, name)


@pytest.mark.parametrize(
    "bad", ["missing", "truncated", "corrupt", "cut", "huge", "endless"]
)
def test_a_broken_mirror_falls_back_to_the_next(bad, mirror, tmp_path):
    folder = data.fetch(
        "mnist", tmp_path, mirrors=[f"{mirror}/{bad}/", f"{mirror}/ok/"]
    )
    assert_pinned(folder)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("missing", "404"),
        ("truncated", "SHA-256 mismatch"),
        ("corrupt", "SHA-256 mismatch"),
        ("cut", "connection closed after"),
        ("huge", "the server offers 1000000000000 bytes: more than 64 MB"),
        ("endless", "the server sent more than 64 MB"),
    ],
)
def test_a_failed_download_leaves_nothing_behind(bad, reason, mirror, tmp_path):
    with pytest.raises(DownloadError) as err:
        data.fetch("mnist", tmp_path, mirrors=[f"{mirror}/{bad}/"])
    message = str(err.value)
    assert reason in message and f"{mirror}/{bad}/" in message
    assert list((tmp_path / "mnist").iterdir()) == []


def test_keyboard_interrupt_mid_download_leaves_nothing_behind(mirror, tmp_path):
    def interrupt(done, total, name):
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data.fetch("mnist", tmp_path, progress=interrupt, mirrors=[f"{mirror}/ok/"] * 2)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_offline_says_where_to_put_the_files_and_app_can_fall_back(
    tmp_path, monkeypatch
):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(data.MIRRORS, "mnist", [f"http://127.0.0.1:{port}/"])
    with pytest.raises(DownloadError) as err:
        data.load_dataset("mnist", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "mnist") in message
    for name in MNIST_FILES:
        assert name in message


def _copy_mnist(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(src / name, dest)
    return dest


def test_a_corrupt_cached_file_is_moved_aside_and_fetched_again(
    mnist_folder, mirror, tmp_path
):
    folder = _copy_mnist(mnist_folder, tmp_path / "mnist")
    labels = folder / "train-labels-idx1-ubyte.gz"
    truncated = labels.read_bytes()[:1000]
    labels.write_bytes(truncated)
    data.fetch("mnist", tmp_path, mirrors=[f"{mirror}/ok/"])
    aside = list(folder.glob("train-labels-idx1-ubyte.gz.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == truncated
    aside[0].unlink()
    assert_pinned(folder)


def test_a_checksum_mismatch_that_cannot_be_refetched_names_file_and_keeps_it(
    mnist_folder, mirror, tmp_path
):
    folder = _copy_mnist(mnist_folder, tmp_path / "mnist")
    images = folder / "t10k-images-idx3-ubyte.gz"
    body = bytearray(images.read_bytes())
    body[5000] ^= 0xFF
    images.write_bytes(body)
    with pytest.raises(DownloadError) as err:
        data.fetch("mnist", tmp_path, mirrors=[f"{mirror}/missing/"])
    message = str(err.value)
    assert str(images) in message and "checksum mismatch" in message
    aside = list(folder.glob("t10k-images-idx3-ubyte.gz.corrupt-*"))
    assert aside[0].name in message and aside[0].read_bytes() == body


def test_a_checksum_mismatch_in_a_read_only_dir_is_reported_untouched(
    mnist_folder, tmp_path
):
    folder = _copy_mnist(mnist_folder, tmp_path / "mnist")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-10])
    before = snapshot(folder)
    folder.chmod(0o555)
    try:
        with pytest.raises(DataError, match="read-only") as err:
            data.load_dataset("mnist", data_dir=tmp_path)
    finally:
        folder.chmod(0o755)
    assert str(labels) in str(err.value) and "checksum mismatch" in str(err.value)
    assert snapshot(folder) == before


def test_an_uncreatable_data_dir_says_which_and_to_set_the_env_var(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError) as err:
        data.load_dataset("mnist", data_dir=blocker / "data")
    assert type(err.value) is DataError  # failed before touching the network
    assert str(blocker / "data" / "mnist") in str(err.value)
    assert "DIGITS_DATA_DIR" in str(err.value)
    assert blocker.read_text() == "not a directory"


def test_a_read_only_data_dir_that_needs_a_download_says_so(tmp_path):
    tmp_path.joinpath("mnist").mkdir()
    tmp_path.joinpath("mnist").chmod(0o555)
    try:
        with pytest.raises(DataError, match="not writable") as err:
            data.load_dataset("mnist", data_dir=tmp_path)
    finally:
        tmp_path.joinpath("mnist").chmod(0o755)
    assert type(err.value) is DataError
    assert str(tmp_path / "mnist") in str(err.value)
    assert "DIGITS_DATA_DIR" in str(err.value)


# ---------------------------------------------------- IDX parsing, synthetic


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    header = struct.pack(f">I{len(dims)}I", magic, *dims)
    path.write_bytes(gzip.compress(header + payload))
    return path


@pytest.fixture
def tiny_idx(tmp_path):
    """Three 2x3 images and their labels, as IDX gzip files."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 2, 3), dtype=np.uint8)
    y = np.array([7, 0, 9], dtype=np.uint8)
    images = write_idx(tmp_path / "img.gz", 2051, x.shape, x.tobytes())
    labels = write_idx(tmp_path / "lbl.gz", 2049, y.shape, y.tobytes())
    return x, y, images, labels


def test_idx_round_trip(tiny_idx):
    x, y, images, labels = tiny_idx
    got_x, got_y = data.read_idx_split(images, labels)
    assert np.array_equal(got_x, x) and got_x.dtype == np.uint8
    assert np.array_equal(got_y, y) and got_y.dtype == np.int64


def test_truncated_gzip_names_the_file_and_keeps_it(tiny_idx):
    _, _, images, labels = tiny_idx
    cut = images.read_bytes()[:-12]
    images.write_bytes(cut)
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        data.read_idx_split(images, labels)
    assert str(images) in str(err.value)
    assert images.read_bytes() == cut


def test_wrong_magic_number_is_named(tiny_idx, tmp_path):
    x, _, _, labels = tiny_idx
    swapped = write_idx(tmp_path / "swapped.gz", 2049, x.shape, x.tobytes())
    with pytest.raises(DataError, match="wrong magic number 2049, expected 2051"):
        data.read_idx_split(swapped, labels)
    with pytest.raises(
        DataError, match=r"img\.gz: wrong magic number 2051, expected 2049"
    ):
        data.read_idx(tmp_path / "img.gz", "labels")


@pytest.mark.parametrize("extra", [-1, 1])
def test_file_length_must_match_the_header_exactly(extra, tiny_idx, tmp_path):
    x, _, _, _ = tiny_idx
    payload = x.tobytes() + b"\0" * extra if extra > 0 else x.tobytes()[:extra]
    bad = write_idx(tmp_path / "bad.gz", 2051, x.shape, payload)
    with pytest.raises(DataError, match="header promises 3x2x3 images") as err:
        data.read_idx(bad, "images")
    assert str(bad) in str(err.value)


def test_image_and_label_counts_must_match(tiny_idx, tmp_path):
    _, _, images, _ = tiny_idx
    two = write_idx(tmp_path / "two.gz", 2049, (2,), bytes([1, 2]))
    with pytest.raises(DataError, match=r"3 images but .*two\.gz has 2 labels"):
        data.read_idx_split(images, two)


def test_idx_labels_outside_the_classes_are_named(tiny_idx, tmp_path):
    _, _, images, _ = tiny_idx
    big = write_idx(tmp_path / "big.gz", 2049, (3,), bytes([1, 12, 3]))
    with pytest.raises(DataError, match=r"big\.gz: label 12 at index 1"):
        data.read_idx_split(images, big)


# ------------------------------------------------------------------- CSV


@pytest.fixture(scope="module")
def sample(mnist):
    """60 real test digits: x uint8 (60, 28, 28), y int64 (60,)."""
    return np.array(mnist.x_test[:60]), np.array(mnist.y_test[:60])


def assert_same_rows(ds, x, y):
    """The split is a partition of (x, y): every row once, 1/6 held out."""
    assert len(ds.x_test) == 10 and len(ds.x_train) == 50
    original = sorted((img.tobytes(), int(lbl)) for img, lbl in zip(x, y, strict=True))
    images = np.concatenate([ds.x_train, ds.x_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    got = sorted(
        (img.tobytes(), int(lbl)) for img, lbl in zip(images, labels, strict=True)
    )
    assert got == original
    assert images.dtype == np.uint8 and labels.dtype == np.int64


def test_csv_kaggle_layout_with_header(sample, tmp_path):
    x, y = sample
    path = tmp_path / "train.csv"
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    table = np.column_stack([y, x.reshape(60, -1)])
    np.savetxt(path, table, fmt="%d", delimiter=",", header=header, comments="")
    ds = data.load_dataset(str(path))
    assert ds.x_train.shape[1:] == (28, 28)
    assert_same_rows(ds, x, y)
    assert ds.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    again = data.load_dataset(str(path))
    assert np.array_equal(again.x_test, ds.x_test)
    assert np.array_equal(again.y_train, ds.y_train)


def test_csv_headerless_label_first(sample, tmp_path):
    x, y = sample
    path = tmp_path / "digits.csv"
    np.savetxt(path, np.column_stack([y, x.reshape(60, -1)]), fmt="%d", delimiter=",")
    assert_same_rows(data.load_dataset(str(path)), x, y)


def test_csv_headerless_label_last_20x20_floats(sample, tmp_path):
    x, y = sample
    crops = x[:, 4:24, 4:24]  # the 20x20 box MNIST centres its digits in
    path = tmp_path / "ex3data1.csv"
    table = np.column_stack([crops.reshape(60, -1) / 255, y])
    np.savetxt(path, table, fmt="%.6f", delimiter=",")
    ds = data.load_dataset(str(path))
    assert ds.x_train.shape[1:] == (20, 20)
    assert_same_rows(ds, crops, y)


def _tiny_csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_column_count_must_be_one_plus_a_square(tmp_path):
    path = _tiny_csv(tmp_path, ["1," + ",".join(["0"] * 10)] * 3)
    before = path.read_bytes()
    with pytest.raises(
        DataError, match=r"11 columns .* 10 is not a perfect square"
    ) as e:
        data.load_dataset(str(path))
    assert str(path) in str(e.value) and path.read_bytes() == before


def test_csv_non_numeric_cell_names_row_and_column(tmp_path):
    rows = [f"{i}," + ",".join(["0"] * 16) for i in range(5)]
    cells = rows[2].split(",")
    cells[4] = "abc"
    rows[2] = ",".join(cells)
    path = _tiny_csv(tmp_path, rows)
    with pytest.raises(DataError, match=r"row 3 .*column 5 is 'abc'") as e:
        data.load_dataset(str(path))
    assert str(path) in str(e.value)


def test_csv_labels_outside_the_class_range_are_named(tmp_path):
    # The Ng layout: pixels then labels 1..10, where 10 stands for 0.
    rows = [",".join(["0.5"] * 4 + [str(label)]) for label in range(1, 11)]
    path = _tiny_csv(tmp_path, rows)
    with pytest.raises(
        DataError, match=r"label 10 in row 10 \(line 10\), column 5"
    ) as e:
        data.load_dataset(str(path))
    assert str(path) in str(e.value) and "0..9" in str(e.value)


def test_csv_pixels_out_of_range_are_named(tmp_path):
    rows = [f"{i % 10}," + ",".join(["0"] * 3 + ["300"]) for i in range(4)]
    path = _tiny_csv(tmp_path, rows)
    with pytest.raises(DataError, match="pixel value 300 in row 1"):
        data.load_dataset(str(path))


def test_needs_download_says_which_datasets_lack_files(tmp_path):
    assert data.needs_download("mnist", data_dir=tmp_path)
    assert not data.needs_download("sklearn-digits", data_dir=tmp_path)
    assert not data.needs_download("mnist")  # $DIGITS_DATA_DIR holds them all
    _copy_mnist(data.data_dir() / "mnist", tmp_path / "mnist")
    assert not data.needs_download("mnist", data_dir=tmp_path)
    (tmp_path / "mnist" / MNIST_FILES[0]).unlink()
    assert data.needs_download("mnist", data_dir=tmp_path)
