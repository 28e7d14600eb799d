"""Tests for digits.handwriting: the SQLite store of the user's labelled drawings,
under two writers at once and with a damaged file."""

import io
import multiprocessing
import sqlite3
import threading

import numpy as np
import pytest

from digits import data, handwriting, registry
from digits.errors import HandwritingCorrupt, HandwritingError
from digits.handwriting import HandwritingStore

PER_WRITER = 100


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def write_many(path: str, writer: int, start=None) -> None:
    """Save PER_WRITER drawings, each its own transaction (runs in a subprocess).

    ``start`` is a barrier that lines the writers up so that they really overlap.
    """
    store = HandwritingStore(path)
    store.count()  # connected and checked before the race begins
    if start is not None:
        start.wait()
    for i in range(PER_WRITER):
        store.add(
            image(1000 * writer + i), (writer + i) % 10, created=1000 * writer + i
        )


def open_fresh_stores(folder: str, rounds: int, start, failures) -> None:
    """Open `rounds` new stores in `folder`, each at the same moment as the other
    processes given the same barrier (runs in a subprocess)."""
    for k in range(rounds):
        start.wait(60)
        try:
            HandwritingStore(f"{folder}/{k}.sqlite").count()
        except HandwritingError as err:
            failures.put(str(err))


def test_add_load_delete_clear(tmp_path):
    store = HandwritingStore(tmp_path / "h.sqlite")
    assert store.count() == 0
    assert store.load().images.shape == (0, 28, 28)
    ids = [store.add(image(i), i % 10, created=100 + i) for i in range(5)]
    float_id = store.add(image(9) / 255.0, 9, source="uploaded")
    saved = store.load()
    assert saved.ids.tolist() == [*ids, float_id]
    assert saved.labels.tolist() == [0, 1, 2, 3, 4, 9]
    assert saved.images.dtype == np.uint8
    np.testing.assert_array_equal(saved.images[2], image(2))
    np.testing.assert_array_equal(saved.images[5], image(9))  # round trip via floats
    assert saved.times[:5].tolist() == [100, 101, 102, 103, 104]
    assert saved.sources == ("drawn",) * 5 + ("uploaded",)
    assert store.delete([ids[1], ids[3], 12345]) == 2
    assert store.load().labels.tolist() == [0, 2, 4, 9]
    assert store.clear() == 4
    assert store.count() == 0


def test_raw_drawing_is_kept_as_png(tmp_path):
    store = HandwritingStore(tmp_path / "h.sqlite")
    raw = np.zeros((60, 40), np.uint8)
    raw[10:50, 18:22] = 255
    drawing = store.add(image(0), 1, raw=raw)
    plain = store.add(image(1), 1)
    from PIL import Image

    png = store.raw_png(drawing)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), raw)
    assert store.raw_png(plain) is None
    with pytest.raises(HandwritingError, match="No saved drawing has id 99"):
        store.raw_png(99)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((8, 8), np.uint8), 1), r"28x28.*\(8, 8\)"),
        ((np.zeros((28, 28), np.uint8), 10), "digit 0-9; got 10"),
        ((np.zeros((28, 28), np.uint8), "7"), "digit 0-9; got '7'"),
        ((np.zeros((28, 28), np.uint8), True), "digit 0-9"),
        ((np.zeros((28, 28), object), 1), "uint8 or float"),
    ],
)
def test_bad_drawings_are_refused(tmp_path, args, message):
    store = HandwritingStore(tmp_path / "h.sqlite")
    with pytest.raises(HandwritingError, match=message):
        store.add(*args)
    with pytest.raises(HandwritingError, match="source"):
        store.add(np.zeros((28, 28), np.uint8), 1, source="scanned")
    assert store.count() == 0


def test_exports_round_trip_without_pickles(tmp_path):
    store = HandwritingStore(tmp_path / "h.sqlite")
    for i in range(12):
        store.add(image(i), i % 4, source=handwriting.SOURCES[i % 2])
    saved = store.load()
    back = handwriting.load_npz(store.export_npz())
    np.testing.assert_array_equal(back.images, saved.images)
    np.testing.assert_array_equal(back.labels, saved.labels)
    assert back.sources == saved.sources
    with np.load(io.BytesIO(store.export_npz()), allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
    # The CSV is a dataset digits.data can load (split into train and test).
    csv_path = tmp_path / "mine.csv"
    csv_path.write_bytes(store.export_csv())
    ds = data.load_csv(csv_path)
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    order = np.lexsort(x.reshape(len(x), -1).T)
    expected = np.lexsort(saved.images.reshape(len(x), -1).T)
    np.testing.assert_array_equal(x[order], saved.images[expected])
    np.testing.assert_array_equal(y[order], saved.labels[expected])
    with pytest.raises(HandwritingError, match="Not an export"):
        handwriting.load_npz(b"not an npz")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "h.sqlite")
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(3)
    writers = [spawn.Process(target=write_many, args=(path, w, start)) for w in (1, 2)]
    for p in writers:
        p.start()
    start.wait(60)
    # This process reads while they write: it only ever sees whole drawings.
    store = HandwritingStore(path)
    seen = []
    while any(p.is_alive() for p in writers):
        seen.append(len(store.load().ids))
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    saved = store.load()
    assert len(saved.ids) == 2 * PER_WRITER == len(set(saved.ids.tolist()))
    assert seen == sorted(seen)
    # Every drawing is intact and labelled as written.
    for drawing, label, when in zip(
        saved.images, saved.labels, saved.times, strict=True
    ):
        writer, i = divmod(int(when), 1000)
        np.testing.assert_array_equal(drawing, image(1000 * writer + i))
        assert label == (writer + i) % 10
    assert store.integrity() == "ok"


def test_processes_opening_a_new_store_at_once_all_get_it(tmp_path):
    """Sessions saving their first drawings at the same moment: the switch to
    write-ahead logging once failed at once with "database is locked" for about
    one opener in 15 (and a writer of the test above with it)."""
    spawn = multiprocessing.get_context("spawn")
    start, failures = spawn.Barrier(3), spawn.Queue()
    openers = [
        spawn.Process(
            target=open_fresh_stores, args=(str(tmp_path), 40, start, failures)
        )
        for _ in range(3)
    ]
    for p in openers:
        p.start()
    for p in openers:
        p.join(120)
        assert p.exitcode == 0
    seen = []
    while not failures.empty():
        seen.append(failures.get())
    assert seen == []
    assert all(
        HandwritingStore(tmp_path / f"{k}.sqlite").count() == 0 for k in range(40)
    )


def test_two_threads_writing_and_deleting_at_once(tmp_path):
    store = HandwritingStore(tmp_path / "h.sqlite")
    doomed = [store.add(image(i), 0) for i in range(PER_WRITER)]
    errors = []

    def run(work) -> None:
        try:
            work()
        except Exception as err:  # surfaced by the assert below
            errors.append(err)

    threads = [
        threading.Thread(target=run, args=(lambda: write_many(str(store.path), 3),)),
        threading.Thread(target=run, args=(lambda: write_many(str(store.path), 4),)),
        threading.Thread(
            target=run, args=(lambda: [store.delete([i]) for i in doomed],)
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    saved = store.load()
    assert (
        sorted(saved.times.astype(int) // 1000) == [3] * PER_WRITER + [4] * PER_WRITER
    )
    assert store.integrity() == "ok"


def test_a_file_that_is_not_a_database_is_kept_aside(tmp_path):
    path = tmp_path / "handwriting.sqlite"
    junk = b"these are not the drawings you are looking for\n" * 200
    path.write_bytes(junk)
    store = HandwritingStore(path)
    with pytest.raises(HandwritingCorrupt) as caught:
        store.count()
    aside = list(tmp_path.glob("handwriting.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == junk
    message = str(caught.value)
    assert str(path) in message and aside[0].name in message
    assert "fresh, empty store" in message
    # The fresh store works at once.
    assert store.count() == 0
    store.add(image(0), 3)
    assert store.load().labels.tolist() == [3]
    assert HandwritingStore(path).integrity() == "ok"


def test_a_damaged_database_is_kept_aside(tmp_path):
    path = tmp_path / "handwriting.sqlite"
    store = HandwritingStore(path)
    for i in range(60):  # about 15 pages of 4 KiB
        store.add(image(i), i % 10)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(path.read_bytes())
    page = 4096
    raw[3 * page : 6 * page] = np.random.default_rng(0).bytes(3 * page)
    path.write_bytes(bytes(raw))
    with pytest.raises(HandwritingCorrupt, match="was damaged"):
        HandwritingStore(path).load()
    # The file and its WAL companions are all kept, side by side.
    (aside,) = tmp_path.glob("handwriting.sqlite.corrupt-*[0-9]")
    assert aside.read_bytes() == bytes(raw)
    assert {p.name for p in tmp_path.iterdir()} >= {
        aside.name + "-wal",
        aside.name + "-shm",
    }
    assert HandwritingStore(path).count() == 0


def test_a_store_that_cannot_be_opened_is_a_clear_error(tmp_path):
    path = tmp_path / "h.sqlite"
    path.mkdir()  # a folder where the file should be
    with pytest.raises(HandwritingError, match=rf"{path}.*{handwriting.DB_ENV}"):
        HandwritingStore(path).add(image(1), 2)


def test_default_path_follows_the_data_dir_then_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(handwriting.DB_ENV, raising=False)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    assert handwriting.default_path() == tmp_path / "data" / handwriting.DB_NAME
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o555)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(shared))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "digits" / handwriting.DB_NAME
    assert handwriting.default_path() == expected
    monkeypatch.setenv(handwriting.DB_ENV, str(tmp_path / "mine.sqlite"))
    assert handwriting.default_path() == tmp_path / "mine.sqlite"


def test_predict_reads_saved_mnist_digits(tmp_path, mnist):
    store = HandwritingStore(tmp_path / "h.sqlite")
    for i in range(20):
        store.add(mnist.x_test[i], int(mnist.y_test[i]))
    model = registry.get("mlp").build(hidden_layer_sizes=(32,), max_iter=5)
    model.fit(mnist.x_train[:2000], mnist.y_train[:2000])
    proba = handwriting.predict(model, store.load())
    assert proba.shape == (20, 10)
    expected = model.predict_proba(mnist.x_test[:20])
    np.testing.assert_allclose(proba, expected, rtol=1e-5)
    assert handwriting.predict(
        model, HandwritingStore(tmp_path / "e").load()
    ).shape == (
        0,
        10,
    )
