"""Planted pickles are never unpickled: from the CLI, the store or any page.

An attacker who can write into the runs folder plants a run whose model file is a
pickle that creates a marker file when unpickled, with its SHA-256 recorded in
``metadata.json`` (the hash proves the file is undamaged, not who wrote it). Every
way of reading runs must leave the marker uncreated and say what to do. The only
way to unpickle an old run is ``digits convert RUN --trust-pickle``, and that
converts a genuine old run into a model that predicts the same.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
from catalogue import FAILURE, USAGE, assert_clean_error
from PIL import Image
from streamlit.testing.v1 import AppTest

from digits import files, registry, store, training
from digits.errors import ModelFileError

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("home", "train", "evaluate", "draw", "inspect", "experiments")


class _Payload:
    """Unpickling this opens (and so creates) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A real MLP run, trained on the sklearn digits (whose images are 8x8)."""
    root = tmp_path_factory.mktemp("genuine")
    mp = pytest.MonkeyPatch()
    mp.setenv(store.RUNS_DIR_ENV, str(root))
    from digits.data import load_dataset

    ds = load_dataset("sklearn-digits")
    run = training.train_run(
        "mlp", ds, params={"hidden_layer_sizes": (16,), "max_iter": 3}
    )
    mp.undo()
    return run, ds


def _write_meta(folder: Path, meta: dict) -> None:
    (folder / store.METADATA_FILE).write_text(json.dumps(meta))


def _as_legacy(run_path: Path, dest: Path, pickle_bytes: bytes) -> Path:
    """A copy of the run at ``run_path`` in digits 0.1's format: its model as
    ``model.joblib`` holding ``pickle_bytes``, with a matching SHA-256."""
    shutil.copytree(run_path, dest)
    meta = json.loads((dest / store.METADATA_FILE).read_text())
    for name in meta["files"]:
        (dest / name).unlink()
    model_file = dest / registry.LEGACY_PICKLE_FILE
    model_file.write_bytes(pickle_bytes)
    meta["files"] = {
        registry.LEGACY_PICKLE_FILE: {
            "sha256": files.sha256_file(model_file),
            "bytes": model_file.stat().st_size,
        }
    }
    _write_meta(dest, meta)
    return dest


@pytest.fixture
def planted(genuine, runs, tmp_path):
    """A planted run called "planted" in the runs dir, and its marker path."""
    runs.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "PWNED"
    _as_legacy(genuine[0].path, runs / "planted", pickle.dumps(_Payload(marker)))
    return runs / "planted", marker


@pytest.fixture
def digit_png(tmp_path) -> Path:
    """An 8x8 "digit" the planted run would be asked to read."""
    path = tmp_path / "digit.png"
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = 255
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize(
    "command, code",
    [
        pytest.param(["predict", "planted", "IMAGE"], FAILURE, id="predict-by-name"),
        pytest.param(["predict", "PATH", "IMAGE"], FAILURE, id="predict-by-path"),
        pytest.param(["evaluate", "planted"], FAILURE, id="evaluate-by-name"),
        pytest.param(["evaluate", "PATH", "--json"], FAILURE, id="evaluate-by-path"),
        # convert is refused until --trust-pickle is given: bad usage.
        pytest.param(["convert", "planted"], USAGE, id="convert-without-trust"),
    ],
)
def test_cli_never_unpickles_a_planted_run(cli, planted, digit_png, command, code):
    folder, marker = planted
    args = [{"PATH": str(folder), "IMAGE": str(digit_png)}.get(a, a) for a in command]
    result = cli(*args)
    line = assert_clean_error(result, "pickle", code=code)
    assert "--trust-pickle" in line
    assert not marker.exists()


def test_runs_lists_the_planted_run_as_unusable(cli, planted):
    folder, marker = planted
    result = cli("runs", "--json")
    assert result.code == 0
    broken = json.loads(result.out)["broken"]
    assert [b["path"] for b in broken] == [str(folder)]
    assert "--trust-pickle" in broken[0]["error"]
    assert not marker.exists()


def test_store_never_unpickles_a_planted_run(planted):
    folder, marker = planted
    with pytest.raises(store.LegacyPickleRun, match="Retrain"):
        store.load_model("planted")
    _, broken = store.list_runs()
    assert [b.path for b in broken] == [folder]
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_pickled_array_in_weights_npz_is_refused(
    cli, genuine, runs, tmp_path, kind, digit_png
):
    """A weights.npz whose array is an object array (a pickle inside the zip) is
    refused by allow_pickle=False, even with its SHA-256 recorded."""
    marker = tmp_path / "PWNED"
    if kind == "mlp":
        folder = runs / "npz-pickle"
        shutil.copytree(genuine[0].path, folder)
    else:
        folder = runs / "npz-pickle"
        shutil.copytree(store.PRETRAINED_DIR / "cnn", folder)
    weights = folder / registry.WEIGHTS_FILE
    with np.load(weights, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    first = sorted(arrays)[0]
    arrays[first] = np.array([_Payload(marker)], dtype=object)
    np.savez(weights, **arrays)
    meta = json.loads((folder / store.METADATA_FILE).read_text())
    meta["files"][registry.WEIGHTS_FILE] = {
        "sha256": files.sha256_file(weights),
        "bytes": weights.stat().st_size,
    }
    _write_meta(folder, meta)
    result = cli("predict", "npz-pickle", digit_png)
    assert_clean_error(result, str(weights), "corrupt", code=FAILURE)
    assert not marker.exists()


def test_a_pickled_predictions_cache_is_never_loaded(genuine, runs, tmp_path):
    """The Evaluate page's cache of test-set predictions is a .npy beside the run;
    one replaced by a pickle is recomputed, not unpickled."""
    run, ds = genuine
    marker = tmp_path / "PWNED"
    expected = store.predictions(run, ds)
    caches = list(run.path.glob("predictions-*.npy"))
    assert caches
    for cache in caches:
        np.save(cache, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    np.testing.assert_array_equal(store.predictions(run, ds), expected)
    assert not marker.exists()


@pytest.mark.parametrize("page", PAGES)
def test_no_dashboard_page_unpickles_a_planted_run(planted, page, monkeypatch):
    folder, marker = planted
    monkeypatch.syspath_prepend(str(ROOT))  # the pages import ui.py from there
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    if page != "home":
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    # A broken run is never offered to pick, so no page can load it.
    offered = [str(o) for box in at.selectbox for o in box.options]
    assert not any("planted" in option for option in offered), offered
    assert not marker.exists()
    if page == "home":
        warnings = " ".join(w.value for w in at.warning)
        assert f"**{folder.name}** was made by an older version" in warnings
        details = " ".join(c.value for c in at.code)  # in the Details expander
        assert "--trust-pickle" in details


def test_convert_with_trust_gives_the_same_predictions(genuine, runs, cli):
    """The one way to read an old run: the user vouches for it with a flag."""
    run, ds = genuine
    model = store.load_model(run)
    slim = copy.copy(model)  # digits 0.1 saved the estimator this way
    buffer = Path(runs.parent / "legacy.joblib")
    joblib.dump(slim, buffer)
    runs.mkdir(parents=True, exist_ok=True)
    legacy = _as_legacy(run.path, runs / "old-run", buffer.read_bytes())
    with pytest.raises(ModelFileError, match="trust-pickle"):
        store.load_model("old-run")
    result = cli("convert", "old-run", "--trust-pickle")
    assert result.code == 0, result.err
    assert not (legacy / registry.LEGACY_PICKLE_FILE).exists()
    converted = store.load_model("old-run")
    np.testing.assert_array_equal(
        converted.predict_proba(ds.x_test), model.predict_proba(ds.x_test)
    )


def test_convert_refuses_a_pickle_that_changed_since_it_was_saved(
    genuine, runs, cli, tmp_path
):
    """--trust-pickle vouches for the file digits saved, not for one swapped in."""
    marker = tmp_path / "PWNED"
    runs.mkdir(parents=True, exist_ok=True)
    folder = _as_legacy(
        genuine[0].path, runs / "swapped", pickle.dumps(_Payload(marker))
    )
    meta = json.loads((folder / store.METADATA_FILE).read_text())
    meta["files"][registry.LEGACY_PICKLE_FILE]["sha256"] = "0" * 64
    _write_meta(folder, meta)
    result = cli("convert", "swapped", "--trust-pickle")
    assert_clean_error(result, "SHA-256", "not converted", code=FAILURE)
    assert not marker.exists()
