"""Bad CSV files given as a dataset: one clear line before training, or a dataset
that trains.

Most cases run ``digits train --model mlp --dataset FILE.csv --epochs 1`` in-process
on a small CSV of 4x4 images and check the one-line message (naming the file, and
the row and line where there is one), that the CSV is untouched and that no run
was saved. The good cases (a byte-order mark, other newlines, quotes, the smallest
CSV that trains) must load into exactly the dataset of the plain file and train.
A FIFO crosses the process boundary, so it runs ``python -m digits`` with a
timeout; the Home page's upload is driven with streamlit's AppTest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from catalogue import FAILURE, assert_clean_error
from streamlit.testing.v1 import AppTest

import ui
from digits import data

ROOT = Path(__file__).resolve().parents[2]
SIDE = 4
HEADER = "label," + ",".join(f"pixel{i}" for i in range(SIDE * SIDE))


def pixels(seed: int, n: int = SIDE * SIDE) -> list[str]:
    return [str(v) for v in np.random.default_rng(seed).integers(0, 256, n)]


def row(label: object, seed: int = 0, cells: dict[int, str] | None = None) -> str:
    """One data line: the label, then 16 pixels; `cells` replaces pixels by index."""
    values = pixels(seed)
    for index, text in (cells or {}).items():
        values[index] = text
    return ",".join([str(label), *values])


def rows(n: int = 5, start: int = 0) -> list[str]:
    """`n` good rows of 3 classes."""
    return [row(i % 3, seed=i) for i in range(start, start + n)]


def text(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


TRAIN_ARGS = ("--model", "mlp", "--epochs", "1")


def train(cli, path: Path):
    return cli("train", *TRAIN_ARGS, "--dataset", path)


def assert_nothing_saved(runs: Path) -> None:
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


# -- bad files: one clear line, the file untouched, no run -------------------------

BAD = [
    # Text encodings: the row (and line) of the first byte that is not UTF-8.
    pytest.param(
        text(HEADER, *rows(), row(1, cells={0: "é"})).replace(b"\xc3\xa9", b"\xe9"),
        ["row 6 (line 7)", "not UTF-8", "0xe9", "Save the file as UTF-8"],
        id="latin1-byte-in-a-data-row",
    ),
    pytest.param(
        text("label,pixél" + ",p" * 15, *rows()).replace(b"\xc3\xa9", b"\xe9"),
        ["line 1", "not UTF-8", "0xe9"],
        id="latin1-byte-in-the-header",
    ),
    pytest.param(
        text(*rows(), "", row(2, cells={3: "\xa0"})).replace(b"\xc2\xa0", b"\xa0"),
        ["row 6 (line 7)", "not UTF-8", "0xa0"],
        id="latin1-byte-headerless-after-a-blank-line",
    ),
    pytest.param(
        "\n".join([HEADER, *rows()]).encode("cp1252") + b"\n\x93quoted\x94\n",
        ["row 6 (line 7)", "0x93"],
        id="windows-1252-smart-quote",
    ),
    pytest.param(
        "\n".join([HEADER, *rows()]).encode("utf-16"),
        ["UTF-16", "save it as UTF-8"],
        id="utf-16-with-its-bom",
    ),
    pytest.param(
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        ["line 1", "not UTF-8", "0x89"],
        id="a-png-renamed-csv",
    ),
    # Too small to train and test on.
    pytest.param(b"", ["is empty", "at least 3"], id="empty-file"),
    pytest.param(b"\n \n\r\n\t\n", ["is empty", "at least 3"], id="blank-lines-only"),
    pytest.param(text(HEADER), ["header but 0 rows", "at least 3"], id="header-only"),
    pytest.param(text(row(3)), ["has 1 row of data", "at least 3"], id="one-row"),
    pytest.param(
        text(row(3), row(7, seed=1)),
        ["has 2 rows of data", "at least 3"],
        id="two-rows",
    ),
    pytest.param(
        text(HEADER, row(3), row(7, seed=1)),
        ["header but 2 rows", "at least 3", "2 different labels"],
        id="header-and-two-rows",
    ),
    pytest.param(
        text(HEADER, *[row(3, seed=i) for i in range(20)]),
        ["every row has label 3", "at least 2 different labels"],
        id="one-class-with-header",
    ),
    pytest.param(
        text(*[row(3, seed=i) for i in range(20)]),
        ["every row has label 3", "at least 2 different labels"],
        id="one-class-headerless",
    ),
    pytest.param(
        text(HEADER, row(0), row(1, seed=1), row(2, seed=2)),
        ["3 rows and 3 different labels", "at least 4 rows"],
        id="every-label-once",
    ),
    # The shape of a row.
    pytest.param(
        text(*[",".join(["1", *pixels(i, 10)]) for i in range(5)]),
        ["11 columns", "10 is not a perfect square", "785"],
        id="not-a-square-number-of-pixels",
    ),
    pytest.param(text("1", "2", "3"), ["1 column", "no pixels"], id="one-column"),
    pytest.param(
        text(*[",".join(["1"] + ["0"] * 257**2)] * 3),
        ["257x257", "at most 256x256"],
        id="images-too-large",
    ),
    pytest.param(
        text(HEADER, *rows(3), "1,2,3", *rows(2, 3)),
        ["row 4 (line 5) has 3 columns, not 17 as on line 1"],
        id="ragged-short-row",
    ),
    pytest.param(
        text(HEADER, *rows(3), row(1) + ",0,0", *rows(2, 3)),
        ["row 4 (line 5) has 19 columns"],
        id="ragged-long-row",
    ),
    pytest.param(
        text(HEADER, *rows(3), row(1) + ","),
        ["row 4 (line 5) has 18 columns"],
        id="trailing-comma",
    ),
    pytest.param(
        text(HEADER, *["1,2,3,4,5"] * 5),
        ["row 1 (line 2) has 5 columns, not 17"],
        id="every-row-disagrees-with-the-header",
    ),
    pytest.param(
        text(HEADER, *rows(), "1" + ",0" * 3_000_000),
        ["row 6 (line 7) has 3,000,001 columns"],
        id="a-huge-line",
    ),
    pytest.param(
        b"7" * 5_000_000, ["line 1 has 1 column", "no pixels"], id="one-huge-cell"
    ),
    # Cells.
    pytest.param(
        text(HEADER, *rows(2), row(1, cells={3: "abc"}), *rows(2, 2)),
        ["row 3 (line 4), column 5 is 'abc', not a number"],
        id="non-numeric-cell",
    ),
    pytest.param(
        text(HEADER, *rows(2), row(1, cells={0: ""})),
        ["row 3 (line 4), column 2 is '', not a number"],
        id="empty-cell",
    ),
    pytest.param(
        text(HEADER, *rows(2), row(1, cells={5: "0x10"})),
        ["column 7 is '0x10', not a number"],
        id="hexadecimal-cell",
    ),
    pytest.param(
        text(HEADER, *rows(2), "# a comment", *rows(2, 2)),
        ["row 3 (line 4) has 1 column"],
        id="comment-line",
    ),
    pytest.param(
        text(HEADER, *rows(2), row(1, cells={0: "\x00"})),
        ["row 3 (line 4), column 2", "not a number"],
        id="nul-byte",
    ),
    pytest.param(
        text(HEADER, *rows(), row(1, cells={1: "nan"})),
        ["row 6 (line 7), column 3 is nan, not a finite number"],
        id="nan-pixel",
    ),
    pytest.param(
        text(HEADER, *rows(), row(1, cells={1: "-inf"})),
        ["column 3 is -inf, not a finite number"],
        id="infinite-pixel",
    ),
    pytest.param(
        text(HEADER, *rows(), row(1, cells={2: "1e400"})),
        ["column 4 is inf, not a finite number"],
        id="overflowing-pixel",
    ),
    # Labels.
    pytest.param(
        text(HEADER, *rows(), row(2.5)),
        ["label 2.5 in row 6 (line 7), column 1", "integer class in 0..9"],
        id="float-label",
    ),
    pytest.param(
        text(HEADER, *rows(), row(-1)),
        ["label -1 in row 6 (line 7)", "0..9"],
        id="negative-label",
    ),
    pytest.param(
        text(*rows(), row(-3)),
        ["label -3 in row 6 (line 6)", "0..9"],
        id="negative-label-headerless",
    ),
    pytest.param(
        text(HEADER, *rows(), row(10), row(11)),
        ["label 10 in row 6 (line 7)", "2 rows with bad labels"],
        id="label-10",
    ),
    pytest.param(
        text(HEADER, *rows(), row("nan")),
        ["row 6 (line 7), column 1 is nan, not a finite number"],
        id="nan-label",
    ),
    # Pixels.
    pytest.param(
        text(HEADER, *rows(), row(1, cells={4: "256"})),
        ["pixel value 256 in row 6 (line 7)", "integers in 0..255"],
        id="pixel-256",
    ),
    pytest.param(
        text(HEADER, *rows(), row(1, cells={4: "-1"})),
        ["pixel value -1 in row 6 (line 7)", "integers in 0..255"],
        id="negative-pixel",
    ),
    pytest.param(
        text(*[",".join(["0.5"] * 16 + [str(i % 2)]) for i in range(5)])
        + b"0.5,1.5"
        + b",0.5" * 14
        + b",1\n",
        ["pixel value 1.5 in row 6 (line 6)", "floats in 0..1"],
        id="float-pixel-above-1",
    ),
]


@pytest.mark.parametrize(("body", "fragments"), BAD)
def test_a_bad_csv_is_refused_in_one_line(cli, runs, tmp_path, body, fragments):
    path = tmp_path / "digits.csv"
    path.write_bytes(body)
    result = train(cli, path)
    assert_clean_error(result, str(path), *fragments, code=FAILURE)
    assert path.read_bytes() == body
    assert_nothing_saved(runs)


# -- paths that are not a CSV file ------------------------------------------------


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.csv"
    path.mkdir()
    (path / "inside.txt").write_text("kept")
    return path


def _dev_zero(tmp_path: Path) -> Path:
    path = tmp_path / "zero.csv"
    path.symlink_to("/dev/zero")
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.csv"


def _dangling(tmp_path: Path) -> Path:
    path = tmp_path / "dangling.csv"
    path.symlink_to(tmp_path / "gone.csv")
    return path


def _over_the_limit(tmp_path: Path) -> Path:
    path = tmp_path / "huge.csv"
    with path.open("wb") as f:  # sparse: no disk space used, nothing read
        f.write(text(HEADER))
        f.truncate(data.CSV_MAX_BYTES + 1)
    return path


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        pytest.param(_directory, ["is a directory", "not a regular file"], id="dir"),
        pytest.param(
            _dev_zero, ["is a character device", "not a regular file"], id="dev-zero"
        ),
        pytest.param(_missing, ["CSV file not found"], id="missing"),
        pytest.param(_dangling, ["CSV file not found"], id="dangling-symlink"),
        pytest.param(_over_the_limit, ["larger than 200 MB"], id="over-200-mb"),
    ],
)
def test_a_path_that_is_not_a_csv_file_is_refused_at_once(
    cli, runs, tmp_path, make, fragments
):
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    start = time.perf_counter()
    result = train(cli, path)
    assert time.perf_counter() - start < 5
    assert_clean_error(result, str(path), *fragments, code=FAILURE)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert_nothing_saved(runs)


@pytest.mark.parametrize("through", ["fifo", "symlink-to-fifo"])
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, through):
    # In a child process: if the FIFO were opened for reading, it would block
    # forever, and only a timeout could end the test.
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    path = fifo
    if through == "symlink-to-fifo":
        path = tmp_path / "link.csv"
        path.symlink_to(fifo)
    env = os.environ | {"DIGITS_RUNS_DIR": str(tmp_path / "runs")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "digits", "train", *TRAIN_ARGS, "--dataset", path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == FAILURE, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        f"digits: error: {path} is a named pipe (FIFO), not a regular file: give "
        "the path of a CSV file"
    ]
    assert elapsed < 30
    assert not (tmp_path / "runs").exists()


# -- good files: the same dataset as the plain CSV, and it trains -------------------

PLAIN = [HEADER, *rows(30)]


def _bom(lines: list[str]) -> bytes:
    return b"\xef\xbb\xbf" + text(*lines)


GOOD = [
    pytest.param(lambda: _bom(PLAIN), PLAIN, id="utf-8-bom-with-header"),
    pytest.param(lambda: _bom(PLAIN[1:]), PLAIN[1:], id="utf-8-bom-headerless"),
    pytest.param(
        lambda: "\r\n".join(PLAIN).encode() + b"\r\n", PLAIN, id="windows-newlines"
    ),
    pytest.param(lambda: "\r".join(PLAIN).encode(), PLAIN, id="classic-mac-newlines"),
    pytest.param(
        lambda: text("", PLAIN[0], "", *PLAIN[1:15], "  ", *PLAIN[15:], "", ""),
        PLAIN,
        id="blank-lines-anywhere",
    ),
    pytest.param(
        lambda: text(",".join(f'"{c}"' for c in PLAIN[0].split(",")), *PLAIN[1:]),
        PLAIN,
        id="quoted-header-as-r-writes-it",
    ),
    pytest.param(
        lambda: text(*[",".join(f'"{c}"' for c in r.split(",")) for r in PLAIN]),
        PLAIN,
        id="every-cell-quoted",
    ),
    pytest.param(
        lambda: text(
            "label," + ",".join(str(i) for i in range(SIDE * SIDE)), *PLAIN[1:]
        ),
        PLAIN,
        id="numbered-pixel-columns-as-pandas-writes-them",
    ),
    pytest.param(
        lambda: text(*[r.replace(",", " , ") for r in PLAIN]),
        PLAIN,
        id="spaces-around-cells",
    ),
]


@pytest.mark.parametrize(("make", "plain"), GOOD)
def test_a_csv_in_another_dialect_loads_as_the_plain_one_and_trains(
    cli, runs, tmp_path, make, plain
):
    path = tmp_path / "dialect.csv"
    path.write_bytes(make())
    reference = tmp_path / "plain.csv"
    reference.write_bytes(text(*plain))
    got, want = data.load_dataset(str(path)), data.load_dataset(str(reference))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert got.x_train.shape == (25, SIDE, SIDE)

    result = train(cli, path)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert "Saved run" in result.out
    assert len(list(runs.iterdir())) == 1


@pytest.mark.parametrize(
    ("labels", "n_test"),
    [
        pytest.param([3, 7, 7], 1, id="three-rows-two-labels"),
        pytest.param([0, 1, 2, 2], 1, id="four-rows-three-labels"),
        pytest.param([5] + [i % 4 for i in range(40)], 7, id="a-label-seen-once"),
    ],
)
def test_the_smallest_csvs_keep_every_label_in_training_and_train(
    cli, runs, tmp_path, labels, n_test
):
    path = tmp_path / "small.csv"
    path.write_bytes(text(*[row(label, seed=i) for i, label in enumerate(labels)]))
    ds = data.load_dataset(str(path))
    assert len(ds.y_test) == n_test
    assert set(ds.y_train.tolist()) == set(labels)
    assert sorted(ds.y_train.tolist() + ds.y_test.tolist()) == sorted(labels)

    result = train(cli, path)
    assert result.code == 0, result.err
    assert "Saved run" in result.out


# -- the Home page's upload ----------------------------------------------------------


@pytest.fixture
def home(runs) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    at.selectbox(key=ui.DATASET_KEY).select(ui.CSV_CHOICE).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_home_upload_of_a_latin1_csv_names_the_file_and_line(home):
    body = text(HEADER, *rows(), row(1, cells={0: "é"})).replace(b"\xc3\xa9", b"\xe9")
    home.file_uploader[0].upload("scans-latin1.csv", body, "text/csv").run()
    assert not home.exception, [e.message for e in home.exception]
    errors = " ".join(e.value for e in home.error)
    assert "scans-latin1.csv: row 6 (line 7) is not UTF-8 text" in errors
    assert "Save the file as UTF-8" in errors
    # The page goes on with the dataset it had: MNIST.
    assert {m.label: m.value for m in home.metric}["Image size"] == "28x28"


def test_home_upload_of_a_csv_with_a_bom_loads(home):
    home.file_uploader[0].upload("excel.csv", _bom(PLAIN), "text/csv").run()
    assert not home.exception, [e.message for e in home.exception]
    assert not home.error, [e.value for e in home.error]
    metric = {m.label: m.value for m in home.metric}
    assert metric["Image size"] == f"{SIDE}x{SIDE}"
    assert metric["Training images"] == "25"
