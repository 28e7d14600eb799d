"""Bad run folders: one bad run never hides the others, and none is half-trusted.

Each case damages one copy of a real run (an MLP trained here on the sklearn
digits, or the shipped default CNN): its metadata, its weights or its prediction
cache. ``digits runs`` must still list the good run and name the bad one with the
reason; commands that use the bad run must end in one clear line; caches that do
not match are recomputed, never trusted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from catalogue import FAILURE, USAGE, assert_clean_error
from PIL import Image
from streamlit.testing.v1 import AppTest

from digits import files, registry, store, training
from digits.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("sklearn-digits")


@pytest.fixture(scope="module")
def genuine(tmp_path_factory, digits8) -> Path:
    """A real MLP run trained on the 8x8 digits, to copy and damage."""
    root = tmp_path_factory.mktemp("genuine")
    mp = pytest.MonkeyPatch()
    mp.setenv(store.RUNS_DIR_ENV, str(root))
    run = training.train_run(
        "mlp", digits8, params={"hidden_layer_sizes": (16,), "max_iter": 2}
    )
    mp.undo()
    return run.path


@pytest.fixture
def two_runs(genuine, runs) -> tuple[Path, Path]:
    """Copies of the genuine run called "good" and "bad" in this test's runs dir."""
    runs.mkdir(parents=True, exist_ok=True)
    good, bad = runs / "good", runs / "bad"
    shutil.copytree(genuine, good)
    shutil.copytree(genuine, bad)
    return good, bad


def edit_meta(folder: Path, change) -> None:
    path = folder / store.METADATA_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- metadata: the wrong types, shapes, sizes and nesting --------------------------

METADATA_CASES = [
    pytest.param(_set("dataset", "mnist"), "dataset", id="dataset-is-a-string"),
    pytest.param(_set("test", "x"), "test", id="test-is-a-string"),
    pytest.param(_set("history", 5), "history", id="history-is-a-number"),
    pytest.param(_set("history", [1, 2]), "history", id="history-of-numbers"),
    pytest.param(
        _set("history", [{"loss": "low"}]), "history", id="history-value-text"
    ),
    pytest.param(_set("image_shape", [784]), "image_shape", id="image-shape-flat"),
    pytest.param(_set("image_shape", [8, 8, 3]), "image_shape", id="image-shape-rgb"),
    pytest.param(_set("image_shape", [8, 8, 1]), "image_shape", id="image-shape-hw1"),
    pytest.param(_set("image_shape", [8, -8]), "image_shape", id="image-shape-neg"),
    pytest.param(_set("image_shape", [8.5, 8]), "image_shape", id="image-shape-float"),
    pytest.param(_set("class_names", "0123"), "class_names", id="classes-string"),
    pytest.param(_set("class_names", ["0"]), "class_names", id="one-class"),
    pytest.param(_set("class_names", [0, 1]), "class_names", id="classes-numbers"),
    pytest.param(_set("kind", ["mlp"]), "kind", id="kind-is-a-list"),
    pytest.param(_set("kind", "transformer"), "unknown model kind", id="kind-unknown"),
    pytest.param(_set("params", None), "params", id="params-null"),
    pytest.param(_set("files", []), "files", id="files-is-a-list"),
    pytest.param(
        lambda m: m["files"]["weights.npz"].__setitem__("sha256", "abc"),
        "sha256",
        id="sha-malformed",
    ),
    pytest.param(
        lambda m: m["files"]["weights.npz"].__setitem__("bytes", "many"),
        "bytes",
        id="size-is-text",
    ),
    pytest.param(lambda m: m["files"].pop("weights.npz"), "weights.npz", id="no-file"),
    pytest.param(_set("format_version", 2), "format version 2", id="newer-format"),
    pytest.param(_set("format_version", "1"), "format version", id="format-as-text"),
    pytest.param(lambda m: m.pop("kind"), "kind", id="kind-missing"),
    pytest.param(
        lambda m: m["test"].__setitem__("accuracy", 7), "accuracy", id="accuracy-7"
    ),
    pytest.param(_set("train_seconds", "1h"), "train_seconds", id="seconds-text"),
]


@pytest.mark.parametrize("change, reason", METADATA_CASES)
def test_bad_metadata_is_named_and_hides_nothing(cli, two_runs, change, reason):
    _, bad = two_runs
    edit_meta(bad, change)
    listed = cli("runs", "--json")
    assert listed.code == 0, listed.err
    summary = json.loads(listed.out)
    assert [r["name"] for r in summary["runs"] if not r["pretrained"]] == ["good"]
    [broken] = summary["broken"]
    assert broken["path"] == str(bad) and reason.lower() in broken["error"].lower()
    assert "Traceback" not in listed.err
    assert_clean_error(
        cli("evaluate", "bad"), str(bad / store.METADATA_FILE), code=FAILURE
    )


RAW_METADATA = [
    pytest.param(_deep(100_000), "nested too deeply", id="100000-deep-json"),
    pytest.param("", "corrupt", id="empty-file"),
    pytest.param("{", "corrupt", id="truncated-json"),
    pytest.param("[]", "object", id="a-list"),
    pytest.param("null", "object", id="null"),
    pytest.param('{"format_version": NaN}', "not valid JSON", id="nan"),
    pytest.param("\x00" * 64, "corrupt", id="nul-bytes"),
    pytest.param(" " * (store.MAX_METADATA_BYTES + 10), "larger", id="over-4-mb"),
]


@pytest.mark.parametrize("text, reason", RAW_METADATA)
def test_unreadable_metadata_is_named_and_hides_nothing(cli, two_runs, text, reason):
    _, bad = two_runs
    (bad / store.METADATA_FILE).write_text(text)
    listed = cli("runs", "--json")
    assert listed.code == 0
    summary = json.loads(listed.out)
    assert "good" in [r["name"] for r in summary["runs"]]
    [broken] = summary["broken"]
    assert reason.lower() in broken["error"].lower(), broken["error"]
    assert_clean_error(cli("predict", "bad", ROOT / "README.md"), "bad", code=FAILURE)


@pytest.mark.parametrize("kind", ["fifo", "folder", "dev-zero-link"])
def test_metadata_that_is_not_a_file_is_refused_at_once(cli, two_runs, kind):
    import os

    _, bad = two_runs
    meta = bad / store.METADATA_FILE
    meta.unlink()
    if kind == "fifo":
        os.mkfifo(meta)  # a blocking read would hang forever
    elif kind == "folder":
        meta.mkdir()
    else:
        meta.symlink_to("/dev/zero")  # an unbounded read would fill memory
    listed = cli("runs", "--json")
    assert listed.code == 0
    [broken] = json.loads(listed.out)["broken"]
    assert str(bad) in broken["path"]
    assert_clean_error(cli("evaluate", "bad"), str(meta), code=FAILURE)


@pytest.mark.parametrize("page", ["home", "evaluate", "inspect", "draw"])
@pytest.mark.parametrize(
    "change",
    [_set("dataset", "mnist"), _set("history", 5), _set("image_shape", [784])],
    ids=["dataset-string", "history-number", "image-shape-flat"],
)
def test_pages_list_good_runs_and_name_the_bad_one(two_runs, page, change):
    """The pages that list runs keep working for every user; Home names the bad
    run and says why."""
    _, bad = two_runs
    edit_meta(bad, change)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    if page != "home":
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    offered = [str(o) for box in at.selectbox for o in box.options]
    assert not any("bad" == o or o.startswith("bad ") for o in offered), offered
    if page == "home":
        table = " ".join(str(df.value.to_dict()) for df in at.dataframe)
        assert "good" in table
        warnings = " ".join(w.value for w in at.warning)
        assert "**bad** is damaged" in warnings
        details = " ".join(c.value for c in at.code)  # in the Details expander
        assert str(bad / store.METADATA_FILE) in details


# -- weights ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_non_finite_weights_are_refused(cli, genuine, runs, tmp_path, kind, value):
    runs.mkdir(parents=True, exist_ok=True)
    folder = runs / "nan"
    shutil.copytree(genuine if kind == "mlp" else store.PRETRAINED_DIR / "cnn", folder)
    weights = folder / registry.WEIGHTS_FILE
    with np.load(weights, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    key = next(k for k in sorted(arrays) if arrays[k].dtype.kind == "f")
    arrays[key].flat[0] = value
    np.savez(weights, **arrays)
    edit_meta(
        folder,
        lambda m: m["files"].__setitem__(
            registry.WEIGHTS_FILE,
            {"sha256": files.sha256_file(weights), "bytes": weights.stat().st_size},
        ),
    )
    image = tmp_path / "digit.png"
    pixels = np.zeros((28, 28), np.uint8)
    pixels[5:23, 13:16] = 255
    Image.fromarray(pixels).save(image)
    line = assert_clean_error(cli("predict", "nan", image), "non-finite", code=FAILURE)
    assert str(weights) in line


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:100]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 50), id="bad-zip"),
        pytest.param(lambda p: np.savez(p, a=np.zeros(3)), id="other-arrays"),
    ],
)
def test_damaged_weights_with_matching_metadata_are_refused(cli, genuine, runs, damage):
    """Even when the metadata is rewritten to match (so the hash check passes),
    a damaged or foreign weights file is refused with its name."""
    runs.mkdir(parents=True, exist_ok=True)
    folder = runs / "damaged"
    shutil.copytree(genuine, folder)
    weights = folder / registry.WEIGHTS_FILE
    damage(weights)
    edit_meta(
        folder,
        lambda m: m["files"].__setitem__(
            registry.WEIGHTS_FILE,
            {"sha256": files.sha256_file(weights), "bytes": weights.stat().st_size},
        ),
    )
    assert_clean_error(cli("evaluate", "damaged"), str(weights), code=FAILURE)


def test_weights_swapped_behind_the_metadata_are_refused(cli, genuine, runs):
    runs.mkdir(parents=True, exist_ok=True)
    folder = runs / "swapped"
    shutil.copytree(genuine, folder)
    weights = folder / registry.WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, one bit different
    weights.write_bytes(bytes(raw))
    assert_clean_error(
        cli("evaluate", "swapped"), "SHA-256", str(weights), code=FAILURE
    )


# -- --overwrite replaces only a digits run -----------------------------------------


@pytest.mark.parametrize(
    "make, refused",
    [
        pytest.param(lambda p: p.write_text("my notes"), True, id="a-plain-file"),
        pytest.param(
            lambda p: (p.mkdir(), (p / "thesis.tex").write_text("x")),
            True,
            id="a-folder-of-other-files",
        ),
        pytest.param(
            lambda p: (p.mkdir(), (p / "metadata.json").write_text("{}")),
            True,
            id="a-folder-with-foreign-metadata",
        ),
        pytest.param(lambda p: p.symlink_to("/tmp"), True, id="a-symlink"),
        pytest.param(lambda p: p.mkdir(), False, id="an-empty-folder"),
        pytest.param(
            lambda p: shutil.copytree(store.PRETRAINED_DIR / "cnn", p),
            False,
            id="a-digits-run",
        ),
    ],
)
def test_overwrite_replaces_only_a_digits_run(cli, runs, tmp_path, make, refused):
    out = tmp_path / "out"
    make(out)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    result = cli(
        "train", "--model", "mlp", "--dataset", "sklearn-digits", "--epochs", "1",
        "--hidden-layer-sizes", "8", "--out", out, "--overwrite",
    )  # fmt: skip
    if refused:
        assert_clean_error(result, str(out), "not a digits run", code=USAGE)
        after = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
        assert after == before  # nothing was touched
        if out.is_file():
            assert out.read_text() == "my notes"
    else:
        assert result.code == 0, result.err
        assert store.open_run(out, allow_paths=True).kind == "mlp"


def test_without_overwrite_an_existing_run_is_kept(cli, runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(store.PRETRAINED_DIR / "cnn", out)
    result = cli(
        "train", "--model", "mlp", "--dataset", "sklearn-digits", "--epochs", "1",
        "--out", out,
    )  # fmt: skip
    assert_clean_error(result, "already exists", "--overwrite", code=USAGE)
    assert store.open_run(out, allow_paths=True).kind == "cnn"


# -- prediction caches ---------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda a: a[::-1].copy(), id="same-shape-wrong-values"),
        pytest.param(lambda a: a[:-1].copy(), id="one-row-short"),
        pytest.param(lambda a: a.astype(np.float64), id="float64"),
        pytest.param(lambda a: np.full_like(a, np.nan), id="nan"),
        pytest.param(lambda a: a.T.copy(), id="transposed"),
    ],
)
def test_a_cache_that_does_not_match_is_recomputed(genuine, runs, digits8, damage):
    """A cache edited behind digits' back (its bytes no longer hash to its name)
    gives the true scores, never the edited ones."""
    runs.mkdir(parents=True, exist_ok=True)
    shutil.copytree(genuine, runs / "cached")
    run = store.open_run("cached")
    truth = store.predictions(run, digits8)
    [cache] = run.path.glob("predictions-*.npy")
    np.save(cache, damage(truth))
    np.testing.assert_array_equal(store.predictions(run, digits8), truth)
    assert len(list(run.path.glob("predictions-*.npy"))) == 1


def test_a_run_edited_after_it_was_listed_is_checked_again(cli, two_runs):
    """Listing remembers checked metadata by the file's inode, time and size; a
    later edit (in place, same inode) is seen at the next listing."""
    _, bad = two_runs
    assert {r.name for r in store.list_runs(include_pretrained=False)[0]} == {
        "bad",
        "good",
    }
    edit_meta(bad, _set("history", 5))
    found, broken = store.list_runs(include_pretrained=False)
    assert [r.name for r in found] == ["good"]
    assert [b.path for b in broken] == [bad]
