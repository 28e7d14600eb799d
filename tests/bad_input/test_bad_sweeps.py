"""Bad sweep input: grids, seeds, folders, damaged results tables, and two
processes writing one sweep.

Each case runs ``digits sweep`` (in-process unless two processes are the point)
on scikit-learn's 8x8 digits with a small MLP, and checks a clear one-line
message or a correct result, no traceback, and nothing lost: a refused grid
trains and writes nothing, a damaged table is left byte for byte as it was (or,
if it is damaged while a sweep runs, kept aside beside the new one).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from catalogue import FAILURE, USAGE, assert_clean_error

from digits import experiments, store
from digits.data import load_dataset

BASE = {
    "--dataset": "sklearn-digits",
    "--model": "mlp",
    "--train-size": "200",
    "--epochs": "1",
    "--n-jobs": "1",
    "--name": "bad",
    "--hidden-layer-sizes": "8",
    "--seeds": "2",
}


def sweep_args(*extra: str, **changes: str) -> list[str]:
    """``sweep`` with BASE's flags, changed by ``changes`` (``hidden_layer_sizes=
    "8;16"`` sets ``--hidden-layer-sizes``), then ``extra`` (e.g. "--json")."""
    flags = dict(BASE)
    flags.update({"--" + k.replace("_", "-"): v for k, v in changes.items()})
    # --flag=value, as a shell user writes a value that starts with "-".
    return ["sweep", *(f"{flag}={value}" for flag, value in flags.items()), *extra]


def saved_runs(root: Path) -> list[str]:
    return sorted(r.name for r in store.list_runs(root, include_pretrained=False)[0])


def table_path(root: Path, name: str = "bad") -> Path:
    return root / experiments.SWEEPS_DIR / name / experiments.RESULTS_FILE


# -- bad grids and seeds: refused before anything is trained or written ----------

GRIDS = [
    pytest.param({"alpha": ""}, ["no values given for alpha"], id="alpha-empty"),
    pytest.param({"alpha": ",;,"}, ["no values given for alpha"], id="alpha-commas"),
    pytest.param(
        {"hidden_layer_sizes": ""},
        ["no value given for hidden_layer_sizes", '"()" for none'],
        id="layers-empty",
    ),
    pytest.param(
        {"hidden_layer_sizes": "8;;16"},
        ["no value given for hidden_layer_sizes", "'8;;16'"],
        id="layers-empty-between",
    ),
    pytest.param(
        {"activation": ""}, ["no values given for activation"], id="activation-empty"
    ),
    pytest.param(
        {"seeds": "0"}, ["number of seeds must be 1 or more", "'0'"], id="seeds-0"
    ),
    pytest.param({"seeds": "x"}, ["cannot read seeds 'x'", "0,5,7"], id="seeds-x"),
    pytest.param(
        {"seeds": "-1"}, ["number of seeds must be 1 or more", "'-1'"], id="seeds-neg"
    ),
    pytest.param(
        {"seeds": "-1,2"}, ["seeds must be between 0 and", "got -1"], id="seed-neg"
    ),
    pytest.param(
        {"seeds": "0,0,1"},
        ["seed 0 is listed more than once", "'0,0,1'"],
        id="seeds-duplicate",
    ),
    pytest.param({"seeds": ""}, ["no seeds given"], id="seeds-empty"),
    pytest.param({"seeds": "1.5"}, ["cannot read seeds '1.5'"], id="seeds-fraction"),
    pytest.param(
        {"seeds": "1000000000"},
        ["1000000000 seeds is more than", "200 trials"],
        id="seeds-a-billion",
    ),
    pytest.param(
        {"seeds": "0,4294967296"},
        ["between 0 and 4294967295", "4294967296"],
        id="seed-over-32-bits",
    ),
    pytest.param({"alpha": "lots"}, ["'lots' for alpha"], id="alpha-word"),
    pytest.param({"alpha": "nan"}, ["nan for alpha", "finite"], id="alpha-nan"),
    pytest.param({"alpha": "0.1,-1"}, ["-1.0 for alpha"], id="alpha-negative"),
    pytest.param(
        {"batch_size": "0"}, ["0 for batch_size", "1 or more"], id="batch-size-0"
    ),
    pytest.param({"batch_size": "2.5"}, ["'2.5' for batch_size"], id="batch-size-2.5"),
    pytest.param(
        {"hidden_layer_sizes": "(-3,)"},
        ["(-3,) for hidden_layer_sizes", "positive"],
        id="layers-negative",
    ),
    pytest.param(
        {"hidden_layer_sizes": "8;0"},
        ["(0,) for hidden_layer_sizes"],
        id="layers-zero",
    ),
    pytest.param(
        {"hidden_layer_sizes": "(8"},
        ["'(8'", "hidden_layer_sizes", "parentheses"],
        id="layers-unclosed",
    ),
    pytest.param(
        {"learning_rate_init": "0"},
        ["0.0 for learning_rate_init", "above 0"],
        id="learning-rate-0",
    ),
    pytest.param({"epochs": "0"}, ["0 for max_iter"], id="epochs-0"),
    pytest.param(
        {"train_size": "0"}, ["train_size must be at least 1"], id="train-size-0"
    ),
    pytest.param(
        {"hidden_layer_sizes": ";".join(str(n) for n in range(1, 22)), "seeds": "10"},
        ["210 trials", "21 x 1", "10 seeds", "the limit is 200"],
        id="grid-too-large",
    ),
    pytest.param(
        {"conv_channels": "(4,)"},
        ["--conv-channels does not apply to --model mlp"],
        id="flag-of-another-model",
    ),
    pytest.param({"n_jobs": "0"}, ["--n-jobs must be 1 or more"], id="n-jobs-0"),
]


@pytest.mark.parametrize(("changes", "fragments"), GRIDS)
def test_a_bad_grid_is_refused_before_anything_runs(cli, runs, changes, fragments):
    started = time.perf_counter()
    result = cli(*sweep_args(**changes))
    assert_clean_error(result, *fragments, code=USAGE)
    assert time.perf_counter() - started < 10  # a billion seeds are not listed
    assert not runs.exists()  # nothing trained, no table, no folder


# -- the sweeps folder cannot be written ------------------------------------------


@contextlib.contextmanager
def unwritable(folder: Path):
    """Make ``folder`` refuse new entries, even to root (chattr +i); undo after."""
    assert folder.is_dir()
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        done, undo = None, None
    try:
        try:
            (folder / ".probe").touch()
        except OSError:
            pass
        else:
            (folder / ".probe").unlink()
            pytest.skip(
                f"cannot make {folder} unwritable here "
                f"({done.stderr.decode().strip() if done else 'chmod had no effect'})"
            )
        yield folder
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            folder.chmod(0o755)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("which", ["runs", "sweeps", "this-sweep"])
def test_an_unwritable_folder_is_found_before_training(cli, runs, which):
    if which == "this-sweep":
        # A sweep with one trial done, resumed with a second seed.
        assert cli(*sweep_args(seeds="0,1", hidden_layer_sizes="8")).code == 0
        folder = table_path(runs).parent
        rows = experiments.read_results(table_path(runs))
        experiments.write_results(table_path(runs), rows[:1])
    else:
        runs.mkdir()
        if which == "sweeps":
            (runs / experiments.SWEEPS_DIR).mkdir()
        folder = runs if which == "runs" else runs / experiments.SWEEPS_DIR
    before, runs_before = snapshot(runs), saved_runs(runs)
    with unwritable(folder):
        result = cli(*sweep_args(seeds="0,1"))
    assert_clean_error(
        result, "cannot write sweep bad's files", str(folder), "writable", code=FAILURE
    )
    assert "Nothing was trained" in result.err
    assert snapshot(runs) == before and saved_runs(runs) == runs_before


def test_a_sweeps_folder_that_is_a_file(cli, runs):
    runs.mkdir()
    (runs / experiments.SWEEPS_DIR).write_text("not a folder")
    result = cli(*sweep_args())
    assert_clean_error(result, str(table_path(runs)), "not a directory", code=FAILURE)
    assert (runs / experiments.SWEEPS_DIR).read_text() == "not a folder"
    assert saved_runs(runs) == []


# -- damaged or foreign results tables ----------------------------------------------


@pytest.fixture
def finished(cli, runs) -> Path:
    """A real sweep's table: hidden 8 and 16, seeds 0 and 1, all done."""
    result = cli(*sweep_args(hidden_layer_sizes="8;16"))
    assert result.code == 0, result.err
    path = table_path(runs)
    assert len(experiments.read_results(path)) == 4
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _blank_key(path: Path) -> bytes:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    rows[2][0] = ""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _bad_seed(path: Path) -> bytes:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    rows[1][rows[0].index("seed")] = "abc"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


DAMAGED = [
    pytest.param(
        lambda p: bytes(range(1, 256)) * 8,
        ["not a sweep's", "line 2 is not utf-8"],
        id="binary-garbage",
    ),
    pytest.param(
        lambda p: p.read_bytes()[:-300] + b"\x00" * 300,
        ["line 5 has a nul byte", "damaged"],
        id="zeros-after-a-crash",
    ),
    pytest.param(
        lambda p: p.read_bytes() + "caf\xe9,done\n".encode("latin-1"),
        ["line 6 is not utf-8"],
        id="latin-1-byte",
    ),
    pytest.param(
        lambda p: b"name,value\nx,1\n", ["no 'key' column"], id="foreign-columns"
    ),
    pytest.param(
        lambda p: b"key,label\nabc,conv 2\n", ["no 'status' column"], id="no-status"
    ),
    pytest.param(_blank_key, ["line 3 has no key"], id="row-without-key"),
    pytest.param(_bad_seed, ["unreadable seed value 'abc'", "line 2"], id="bad-seed"),
]


@pytest.mark.parametrize(("damage", "fragments"), DAMAGED)
def test_a_damaged_table_is_refused_and_left_as_it_was(
    cli, runs, finished, damage, fragments
):
    body = damage(finished)
    finished.write_bytes(body)
    before = saved_runs(runs)
    result = cli(*sweep_args(hidden_layer_sizes="8;16;32"))
    line = assert_clean_error(result, str(finished), *fragments, code=FAILURE)
    assert "move it away" in line.lower()
    assert finished.read_bytes() == body  # not rewritten
    assert saved_runs(runs) == before  # nothing trained on top of it


def test_a_huge_table_is_not_read(cli, runs, finished):
    with open(finished, "r+b") as f:
        f.truncate(experiments.MAX_TABLE_BYTES + 1)  # sparse: costs no disk
    started = time.perf_counter()
    result = cli(*sweep_args(hidden_layer_sizes="8;16"))
    assert_clean_error(result, str(finished), "larger than 32 MB", code=FAILURE)
    assert time.perf_counter() - started < 10
    assert finished.stat().st_size == experiments.MAX_TABLE_BYTES + 1


def test_a_table_that_is_a_folder(cli, runs):
    table_path(runs).mkdir(parents=True)
    result = cli(*sweep_args())
    assert_clean_error(result, str(table_path(runs)), "is not a file", code=FAILURE)
    assert table_path(runs).is_dir() and saved_runs(runs) == []


def test_a_table_that_is_a_fifo_does_not_hang(cli, runs):
    path = table_path(runs)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)

    def release():  # if the read blocks, let it go after 10 s: a failure, not a hang
        if not done.wait(10):
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    done = threading.Event()
    threading.Thread(target=release, daemon=True).start()
    started = time.perf_counter()
    result = cli(*sweep_args())
    done.set()
    assert time.perf_counter() - started < 5
    assert_clean_error(result, str(path), "is not a file", code=FAILURE)
    assert saved_runs(runs) == []


# -- tables that are odd but readable: a correct result ------------------------------


def test_a_table_saved_with_a_bom_resumes(cli, runs, finished):
    finished.write_bytes(b"\xef\xbb\xbf" + finished.read_bytes())
    result = cli(*sweep_args("--json", hidden_layer_sizes="8;16"))
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert (out["ran"], out["skipped"]) == (0, 4)


def test_an_empty_table_file_is_a_new_table(cli, runs):
    table_path(runs).parent.mkdir(parents=True)
    table_path(runs).write_bytes(b"")
    result = cli(*sweep_args())
    assert result.code == 0, result.err
    assert len(experiments.read_results(table_path(runs))) == 2


def test_a_table_from_an_older_version_with_other_columns_resumes(cli, runs, finished):
    """Columns missing (curve, finished) and one this version does not know."""
    rows = list(csv.DictReader(io.StringIO(finished.read_text(encoding="utf-8"))))
    columns = [c for c in rows[0] if c not in ("curve", "finished")] + ["note"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**r, "note": "old"} for r in rows)
    finished.write_text(out.getvalue(), encoding="utf-8")
    result = cli(*sweep_args("--json", hidden_layer_sizes="8;16;32"))
    assert result.code == 0, result.err
    assert (json.loads(result.out)["ran"], json.loads(result.out)["skipped"]) == (2, 4)
    table = experiments.read_results(finished)
    assert len(table) == 6 and len({r["key"] for r in table}) == 6
    old = {r["key"] for r in rows}
    assert [r["note"] for r in table if r["key"] in old] == ["old"] * 4  # kept


def test_a_repeated_row_is_kept_once(cli, runs, finished):
    lines = _lines(finished)
    finished.write_text("".join(lines + lines[1:2]), encoding="utf-8")
    assert len(experiments.read_results(finished)) == 5
    result = cli(*sweep_args(hidden_layer_sizes="8;16;32"))
    assert result.code == 0, result.err
    table = experiments.read_results(finished)
    assert len(table) == 6 and len({r["key"] for r in table}) == 6


def test_another_grids_rows_under_the_same_name_are_kept(cli, runs, finished):
    ours = {r["key"] for r in experiments.read_results(finished)}
    result = cli(*sweep_args(hidden_layer_sizes="4", alpha="0.01"))
    assert result.code == 0, result.err
    table = experiments.read_results(finished)
    assert len(table) == 6 and ours < {r["key"] for r in table}


def test_a_table_damaged_mid_sweep_is_kept_aside(runs, caplog):
    """While the sweep runs, something overwrites its table: the damaged file is
    kept (renamed, byte for byte) and a new table holds every row."""
    ds = load_dataset("sklearn-digits")
    sweep = experiments.plan(
        "mlp",
        {"hidden_layer_sizes": [(8,), (16,)]},
        dataset="sklearn-digits",
        seeds=(0, 1),
        train_size=200,
        params={"max_iter": 1},
        name="mid",
    )
    garbage = b"\xff\xfe not a table \x00"

    def damage(row):
        if not damage.done:
            damage.done = True
            sweep.results_path.write_bytes(garbage)

    damage.done = False
    outcome = experiments.run_sweep(sweep, ds, n_jobs=1, on_result=damage)
    assert outcome.ran == 4 and not outcome.interrupted
    aside = list(sweep.folder.glob("results.csv.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    table = experiments.read_results(sweep.results_path)
    assert sorted(r["key"] for r in table) == sorted(t.key for t in sweep.trials)
    assert any(aside[0].name in r.getMessage() for r in caplog.records)


# -- two processes, one sweep ---------------------------------------------------------


REPO = Path(__file__).resolve().parents[2]


def _process_env(runs: Path) -> dict[str, str]:
    """This environment (DIGITS_DATA_DIR included) with ``runs`` as the runs dir."""
    return dict(os.environ, **{store.RUNS_DIR_ENV: str(runs)})


def test_two_processes_running_one_sweep_lose_and_repeat_no_trial(runs):
    """Two ``digits sweep --name shared`` at once, seeds 0-2 and 1-3 (four trials
    in common, eight in all): the table ends with each trial exactly once, and
    each was trained once. The trials train 30 epochs on 1,000 images (about
    0.1 s each) so that the two processes' trials overlap in time."""
    common = [
        sys.executable,
        "-m",
        "digits",
        "sweep",
        "--dataset",
        "sklearn-digits",
        "--model",
        "mlp",
        "--hidden-layer-sizes",
        "8;16",
        "--train-size",
        "1000",
        "--epochs",
        "30",
        "--name",
        "shared",
        "--json",
    ]
    env = _process_env(runs)
    first = subprocess.Popen(
        [*common, "--seeds", "0,1,2", "--n-jobs", "1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = subprocess.Popen(
        [*common, "--seeds", "1,2,3", "--n-jobs", "2"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    outs = []
    for process in (first, second):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        outs.append(json.loads(out))
    expected = set()
    for seeds in ((0, 1, 2), (1, 2, 3)):
        expected |= {
            t.key
            for t in experiments.plan(
                "mlp",
                {"hidden_layer_sizes": [(8,), (16,)], "max_iter": [30]},
                dataset="sklearn-digits",
                seeds=seeds,
                train_size=1000,
                name="shared",
            ).trials
        }
    table = experiments.read_results(table_path(runs, "shared"))
    keys = [r["key"] for r in table]
    assert len(expected) == 8
    assert sorted(keys) == sorted(expected)  # every trial, none twice
    assert all(r["status"] == "done" for r in table)
    # Each trial was trained once, by one process or the other.
    assert sum(o["ran"] for o in outs) == 8
    assert all(o["ran"] + o["skipped"] == 6 and not o["interrupted"] for o in outs)
    assert sorted(r["run"] for r in table) == saved_runs(runs)
    folder = table_path(runs, "shared").parent
    assert [p.name for p in folder.glob(".results.csv.*")] == [".results.csv.lock"]


APPENDER = """
import sys
from digits import experiments
path, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(first, last):
    experiments.append_result(
        path, {"key": f"k{i:04d}", "status": "done", "label": sys.argv[4]}
    )
"""


def test_readers_never_see_a_half_written_table(runs, tmp_path):
    """Two processes add 150 rows each (50 keys in common) as fast as they can
    while this one reads the table: every read parses, no read has fewer rows
    than the one before, and the table ends with each of the 250 keys once."""
    path = tmp_path / "sweep" / experiments.RESULTS_FILE
    env = _process_env(runs)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path), str(a), str(b), name],
            env=env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a, b, name in ((0, 150, "first"), (100, 250, "second"))
    ]
    reads, last = 0, 0
    while any(w.poll() is None for w in writers):
        rows = experiments.read_results(path)
        assert len(rows) >= last and len({r["key"] for r in rows}) == len(rows)
        last, reads = len(rows), reads + 1
    for writer in writers:
        assert writer.wait() == 0, writer.stderr.read()
    table = experiments.read_results(path)
    assert sorted(r["key"] for r in table) == [f"k{i:04d}" for i in range(250)]
    assert reads > 1
