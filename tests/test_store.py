"""Tests for digits.store and digits.registry: runs saved, listed, checked, loaded.

Each test gets its own runs directory ($DIGITS_RUNS_DIR = tmp_path/runs). Models are
small and trained on scikit-learn's 8x8 digits, except the check of the shipped
default models, which are scored on the real MNIST test set.
"""

import dataclasses
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from digits import data, files, registry, store, training
from digits.baseline import MLPBaseline
from digits.errors import ConfigError, ModelFileError, StorageError
from digits.nn.callbacks import Callback


@pytest.fixture(autouse=True)
def runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def small():
    return data.load_dataset("sklearn-digits")


@pytest.fixture(scope="module")
def mlp(small):
    model = MLPBaseline((32,), max_iter=10, random_state=0)
    return model.fit(small.x_train, small.y_train)


# Tiny NumPy models for 8x8 images, one per NumPy kind.
NUMPY_PARAMS = {
    "cnn": {"conv_channels": (4,), "kernel_size": 3, "hidden_layer_sizes": (16,)},
    "dense": {"hidden_layer_sizes": (16,)},
}


@pytest.fixture(scope="module", params=sorted(NUMPY_PARAMS))
def numpy_model(request, small):
    kind = request.param
    model = registry.get(kind).build(max_iter=2, **NUMPY_PARAMS[kind])
    return kind, model.fit(small.x_train, small.y_train)


def save(model, small, kind="mlp", **kwargs) -> store.Run:
    return store.save_run(model, kind=kind, dataset=small, **kwargs)


def edit_meta(run: store.Run, change) -> None:
    path = run.path / store.METADATA_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def rehash(run: store.Run, name: str) -> None:
    """Record a changed file's new size and hash, as if the store had written it."""
    file = run.path / name

    def update(meta):
        meta["files"][name] = {
            "sha256": files.sha256_file(file),
            "bytes": file.stat().st_size,
        }

    edit_meta(run, update)


# -- round trips ------------------------------------------------------------------


def test_mlp_round_trip(mlp, small, runs):
    run = save(mlp, small)
    assert run.path.parent == runs
    loaded = store.load_model(run.name)
    np.testing.assert_array_equal(
        loaded.predict_proba(small.x_test), mlp.predict_proba(small.x_test)
    )
    assert loaded.history_ == mlp.history_
    assert sorted(os.listdir(run.path)) == ["metadata.json", "mlp.json", "weights.npz"]
    # It keeps training where it left off, as scikit-learn's partial_fit does.
    loaded.partial_fit(small.x_train, small.y_train)
    assert loaded.n_iter_ == mlp.n_iter_ + 1


def test_numpy_round_trip_uses_npz_without_pickle(numpy_model, small):
    kind, model = numpy_model
    run = save(model, small, kind=kind)
    assert sorted(os.listdir(run.path)) == [
        "metadata.json",
        "model.json",
        "weights.npz",
    ]
    with np.load(run.path / "weights.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype == np.float32 for k in npz.files)
    loaded = store.load_model(run)
    np.testing.assert_allclose(
        loaded.predict_proba(small.x_test), model.predict_proba(small.x_test)
    )
    assert (type(loaded).__name__, loaded.conv_channels) == (
        "CNNClassifier",
        model.conv_channels,
    )


def test_train_run_records_everything(small):
    run = training.train_run("mlp", small, preset="quick", params={"max_iter": 3})
    meta = run.meta
    assert meta["format_version"] == store.FORMAT_VERSION
    assert meta["kind"] == "mlp" and meta["preset"] == "quick"
    assert meta["params"]["max_iter"] == 3
    assert meta["params"]["hidden_layer_sizes"] == [100]
    assert meta["dataset"] == {
        "name": "sklearn-digits",
        "checksum": small.checksum,
        # the training images left once the validation images are held out
        "n_train": len(data.validation_split(small).train),
        "n_test": len(small.x_test),
    }
    assert meta["image_shape"] == [8, 8]
    assert meta["class_names"] == list(small.class_names)
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert meta["validation"] == (
        "144 training images (10%, stratified by class) (held out, never trained on)"
    )
    # The last validation figure is the model's accuracy on the held-out images.
    held = data.validation_split(small).validation
    model = store.load_model(run)
    assert meta["history"][-1]["val_accuracy"] == pytest.approx(
        np.mean(model.predict(small.x_train[held]) == small.y_train[held])
    )
    assert meta["test"]["accuracy"] > 0.5
    assert len(meta["test"]["confusion_matrix"]) == 10
    assert meta["train_seconds"] > 0
    assert {"python", "numpy", "scikit-learn", "joblib", "digits"} <= set(
        meta["versions"]
    )
    assert meta["created"].endswith("+00:00")
    sha = meta["files"]["weights.npz"]["sha256"]
    assert sha == files.sha256_file(run.path / "weights.npz")
    assert run.summary()["epochs"] == 3


def test_train_run_subset_and_interrupt(small):
    class Stop(Callback):
        def on_epoch_end(self, epoch, logs):
            self.stop_training = True

    run = training.train_run(
        "mlp", small, params={"max_iter": 50}, train_size=300, callbacks=[Stop()]
    )
    assert run.meta["dataset"]["n_train"] == 300
    assert run.meta["stopped"] == "interrupted"
    assert len(run.meta["history"]) == 1


def test_train_run_validation_subset(small, monkeypatch):
    seen = []
    real_fit = MLPBaseline.fit

    def spy(self, X, y, **kwargs):
        seen.append(len(kwargs["validation_data"][0]))
        return real_fit(self, X, y, **kwargs)

    monkeypatch.setattr(MLPBaseline, "fit", spy)
    run = training.train_run("mlp", small, params={"max_iter": 2}, validation_size=100)
    assert seen == [100]
    assert run.meta["validation"] == (
        "100 of 144 training images (10%, stratified by class) "
        "(held out, never trained on)"
    )
    assert run.meta["test"]["n"] == len(small.x_test)  # scored on the whole set


# -- broken and hostile files -----------------------------------------------------


def test_truncated_npz_is_refused(numpy_model, small):
    kind, model = numpy_model
    run = save(model, small, kind=kind)
    weights = run.path / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFileError, match=r"weights\.npz is truncated"):
        store.load_model(run.name)
    rehash(run, "weights.npz")  # even when its hash matches, it cannot be read
    with pytest.raises(ModelFileError, match=r"weights\.npz is corrupt"):
        store.load_model(run.name)


def test_missing_npz_is_refused(numpy_model, small):
    kind, model = numpy_model
    run = save(model, small, kind=kind)
    (run.path / "weights.npz").unlink()
    with pytest.raises(ModelFileError, match=r"weights\.npz is missing"):
        store.load_model(run.name)


def test_corrupt_npz_is_refused(numpy_model, small):
    kind, model = numpy_model
    run = save(model, small, kind=kind)
    weights = run.path / "weights.npz"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64  # same size, new bytes
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="SHA-256") as err:
        store.load_model(run.name)
    assert str(weights) in str(err.value)


def test_npz_with_other_shapes_is_refused(numpy_model, small):
    kind, model = numpy_model
    run = save(model, small, kind=kind)
    with np.load(run.path / "weights.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    first = sorted(arrays)[0]
    arrays[first] = np.zeros((3, 3), np.float32)
    np.savez(run.path / "weights.npz", **arrays)
    rehash(run, "weights.npz")
    with pytest.raises(ModelFileError, match="does not fit its architecture"):
        store.load_model(run.name)


def test_tampered_weights_are_refused_before_loading(mlp, small, monkeypatch):
    run = save(mlp, small)
    calls = []
    real_load = registry.MODELS["mlp"].load
    monkeypatch.setitem(
        registry.MODELS,
        "mlp",
        dataclasses.replace(
            registry.MODELS["mlp"],
            load=lambda folder: calls.append(folder) or real_load(folder),
        ),
    )
    store.load_model(run.name)
    assert len(calls) == 1  # the spy sees the store's loads

    path = run.path / "weights.npz"
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF  # one byte changed, same size
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="SHA-256") as err:
        store.load_model(run.name)
    assert str(path) in str(err.value)
    assert len(calls) == 1  # the file was not read


def test_other_format_version_is_refused(mlp, small):
    run = save(mlp, small)
    edit_meta(run, lambda m: m.update(format_version=store.FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="format version 2") as err:
        store.load_model(run.name)
    assert "metadata.json" in str(err.value)


def test_numpy_architecture_of_other_format_version_is_refused(numpy_model, small):
    kind, model = numpy_model
    run = save(model, small, kind=kind)
    arch = run.path / "model.json"
    config = json.loads(arch.read_text())
    config["format_version"] = 99
    arch.write_text(json.dumps(config))
    rehash(run, "model.json")
    with pytest.raises(ModelFileError, match="version 99"):
        store.load_model(run.name)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(image_shape=[28, 28]), "incompatible"),
        (lambda m: m.update(class_names=["a", "b"]), "incompatible"),
        (lambda m: m.update(kind="transformer"), "unknown model kind"),
        (lambda m: m.pop("files"), "'files' is a required property"),
        (lambda m: m.update(image_shape="28x28"), "malformed"),
    ],
)
def test_metadata_that_does_not_match_is_refused(mlp, small, change, message):
    run = save(mlp, small)
    edit_meta(run, change)
    with pytest.raises(ModelFileError, match=message):
        store.load_model(run.name)


def test_model_for_other_images_or_classes_is_refused(mlp, small):
    run = save(mlp, small)
    store.check_compatible(run, (8, 8), 10)
    with pytest.raises(ModelFileError, match="8x8 images with 10 classes"):
        store.check_compatible(run, (28, 28), 10)
    with pytest.raises(ModelFileError, match="Use a run trained"):
        store.check_compatible(run, (8, 8), 26)
    mnist_like = small._replace(x_test=np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(ModelFileError, match="28x28"):
        store.predictions(run, mnist_like)


def test_metadata_missing_or_corrupt(mlp, small):
    run = save(mlp, small)
    meta = run.path / "metadata.json"
    meta.write_text("{not json")
    with pytest.raises(ModelFileError, match=r"metadata\.json is corrupt"):
        store.open_run(run.name)
    meta.unlink()
    with pytest.raises(ModelFileError, match=r"metadata\.json is missing"):
        store.open_run(run.name)


def test_list_runs_reports_broken_runs_without_failing(mlp, small, runs):
    good = save(mlp, small, name="good")
    truncated = save(mlp, small, name="truncated")
    (truncated.path / "weights.npz").write_bytes(b"\x80")
    no_meta = save(mlp, small, name="no-meta")
    (no_meta.path / "metadata.json").unlink()
    bad_json = save(mlp, small, name="bad-json")
    (bad_json.path / "metadata.json").write_text("[1, 2")
    (runs / ".tmp-half-written").mkdir()
    (runs / "notes.txt").write_text("not a run")

    found, broken = store.list_runs(include_pretrained=False)
    assert [r.name for r in found] == [good.name]
    reasons = {b.path.name: b.error for b in broken}
    assert set(reasons) == {"truncated", "no-meta", "bad-json"}
    assert "weights.npz is truncated" in reasons["truncated"]
    assert "metadata.json is missing" in reasons["no-meta"]
    assert "metadata.json is corrupt" in reasons["bad-json"]


# -- names and concurrent writes --------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../x", "x"),
        ("../../etc/passwd", "etc-passwd"),
        ("/abs/path", "abs-path"),
        ("a\\b:c*?d", "a-b-c-d"),
        ("my run (v2)", "my-run-v2"),
        (".hidden", "hidden"),
        ("a..b", "a.b"),
        ("x" * 300, "x" * store.MAX_NAME),
    ],
)
def test_sanitize_name(name, expected):
    assert store.sanitize_name(name) == expected


@pytest.mark.parametrize("name", ["", "..", "/", "../..", "default", "default-mlp"])
def test_unusable_names_are_refused(name):
    with pytest.raises(ConfigError):
        store.sanitize_name(name)


def test_run_names_cannot_escape_the_runs_dir(mlp, small, runs, tmp_path):
    run = save(mlp, small, name="../../escaped")
    assert run.path == runs / "escaped"
    assert not (tmp_path.parent / "escaped").exists()
    # A real run outside the runs dir is not reachable by a traversing name...
    outside = save(mlp, small, out=tmp_path / "outside")
    with pytest.raises(ModelFileError, match="No run called"):
        store.open_run("../outside")
    # ...only by an explicit path, which the CLI allows.
    assert store.open_run(str(outside.path), allow_paths=True).path == outside.path


def test_names_are_unique(mlp, small, runs):
    first = save(mlp, small, name="same")
    second = save(mlp, small, name="same")
    assert (first.path.name, second.path.name) == ("same", "same-2")
    default_named = save(mlp, small)
    assert default_named.name.endswith("-mlp-sklearn-digits")


def _save_many(runs_dir: str, source: str, barrier, results, n: int) -> None:
    """Process body: wait for the other process, then save ``n`` runs named "race"."""
    os.environ[store.RUNS_DIR_ENV] = runs_dir
    model = store.load_model(source, allow_paths=True)
    small = data.load_dataset("sklearn-digits")
    barrier.wait()
    names = [
        store.save_run(model, kind="mlp", dataset=small, name="race").name
        for _ in range(n)
    ]
    results.put(names)


def test_concurrent_saves_never_collide(mlp, small, runs, tmp_path):
    source = save(mlp, small, out=tmp_path / "source")
    # fork starts in milliseconds; spawn would re-import scikit-learn per process.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (str(runs), str(source.path), barrier, results, 5)
    procs = [ctx.Process(target=_save_many, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    names = results.get(timeout=120) + results.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(names) == sorted(["race"] + [f"race-{i}" for i in range(2, 11)])
    found, broken = store.list_runs(include_pretrained=False)
    assert len(found) == 10 and broken == []
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]
    for name in names:
        np.testing.assert_array_equal(
            store.load_model(name).predict(small.x_test), mlp.predict(small.x_test)
        )


def test_failed_save_leaves_nothing(mlp, small, runs, monkeypatch):
    def half_write(model, folder):
        (folder / "weights.npz").write_bytes(b"partial")
        raise OSError("disk full")

    broken_kind = dataclasses.replace(registry.MODELS["mlp"], save=half_write)
    monkeypatch.setitem(registry.MODELS, "mlp", broken_kind)
    with pytest.raises(OSError, match="disk full"):
        save(mlp, small, name="doomed")
    assert list(runs.iterdir()) == []


def test_a_save_clears_half_written_runs_left_by_a_dead_process(mlp, small, runs):
    """A process killed mid-save leaves a hidden .tmp- folder; the next save
    removes it once it is clearly abandoned, and leaves a recent one alone (it
    may be another process's save in progress)."""
    runs.mkdir(parents=True, exist_ok=True)
    abandoned, recent = runs / ".tmp-killed", runs / ".tmp-in-progress"
    for folder in (abandoned, recent):
        folder.mkdir()
        (folder / "weights.npz").write_bytes(b"partial")
    old = time.time() - store.ABANDONED_SECONDS - 60
    os.utime(abandoned, (old, old))
    save(mlp, small, name="next")
    assert not abandoned.exists() and recent.exists()
    assert [r.name for r in store.list_runs(include_pretrained=False)[0]] == ["next"]


def test_out_dir_exact_and_overwrite(mlp, small, tmp_path):
    out = tmp_path / "shipped" / "mlp"
    run = save(mlp, small, out=out)
    assert run.path == out and (out / "metadata.json").is_file()
    with pytest.raises(ConfigError, match="already exists"):
        save(mlp, small, out=out)
    again = save(mlp, small, out=out, overwrite=True)
    assert again.meta["created"] >= run.meta["created"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp"]


def test_delete_run(mlp, small, runs):
    run = save(mlp, small, name="bye")
    store.delete_run("bye")
    assert list(runs.iterdir()) == []
    with pytest.raises(ConfigError, match="shipped"):
        store.delete_run(store.Run(store.PRETRAINED_DIR / "mlp", {}, pretrained=True))
    assert not run.path.exists()


# -- managing runs: rename, tag, delete -------------------------------------------

SHIPPED = ["default-cnn", "default-mlp"]


def test_rename_run_moves_the_whole_run(mlp, small, runs):
    run = save(mlp, small, name="before")
    x = small.x_test[:50]
    renamed = store.rename_run("before", "after")
    assert renamed.name == "after" and renamed.path == runs / "after"
    assert not run.path.exists()
    assert [r.name for r in store.list_runs(include_pretrained=False)[0]] == ["after"]
    # Everything comes along: the metadata and the model, which still loads.
    assert renamed.meta["files"] == run.meta["files"]
    np.testing.assert_array_equal(store.load_model("after").predict(x), mlp.predict(x))


def test_rename_run_sanitises_the_new_name(mlp, small, runs):
    save(mlp, small, name="plain")
    renamed = store.rename_run("plain", "  my best/run?  ")
    assert renamed.name == "my-best-run"
    assert (runs / "my-best-run").is_dir()


@pytest.mark.parametrize(
    "new_name, message",
    [
        ("???", "no usable characters"),
        ("default-cnn", "reserved for the shipped models"),
        ("default", "reserved for the shipped models"),
        ("taken", "already exists"),
    ],
)
def test_rename_run_refuses_bad_or_taken_names(mlp, small, runs, new_name, message):
    save(mlp, small, name="mine")
    save(mlp, small, name="taken")
    with pytest.raises(ConfigError, match=message):
        store.rename_run("mine", new_name)
    # Nothing moved.
    assert sorted(p.name for p in runs.iterdir()) == ["mine", "taken"]


def test_rename_to_an_existing_empty_folder_is_refused(mlp, small, runs):
    save(mlp, small, name="mine")
    (runs / "empty").mkdir()
    with pytest.raises(ConfigError, match="'empty' already exists"):
        store.rename_run("mine", "empty")
    assert (runs / "mine" / store.METADATA_FILE).is_file()


def test_rename_of_a_missing_run_names_it(runs):
    with pytest.raises(ModelFileError, match="No run called 'ghost'"):
        store.rename_run("ghost", "x")


def test_a_run_gone_meanwhile_is_reported_not_recreated(mlp, small, runs):
    run = save(mlp, small, name="mine")
    store.delete_run("mine")  # another session, between listing and clicking
    for change in (
        lambda: store.rename_run(run, "other"),
        lambda: store.set_tags(run, "a"),
        lambda: store.delete_run(run),
    ):
        with pytest.raises(ModelFileError):
            change()
    assert list(runs.iterdir()) == []


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_runs_cannot_be_renamed_tagged_or_deleted(name):
    before = (store.open_run(name).path / store.METADATA_FILE).read_bytes()
    for change in (
        lambda: store.rename_run(name, "mine"),
        lambda: store.set_tags(name, "mine"),
        lambda: store.delete_run(name),
    ):
        with pytest.raises(ConfigError, match=f"{name} is a shipped model"):
            change()
    assert store.open_run(name).path.is_dir()
    assert (store.open_run(name).path / store.METADATA_FILE).read_bytes() == before


def test_set_tags_rewrites_only_the_metadata(mlp, small, runs):
    run = save(mlp, small, name="mine")
    weights = (run.path / registry.WEIGHTS_FILE).read_bytes()
    tagged = store.set_tags("mine", " baseline,  for   class , baseline,, ")
    assert tagged.tags == ("baseline", "for class")
    assert store.open_run("mine").tags == ("baseline", "for class")
    assert store.open_run("mine").summary()["tags"] == ["baseline", "for class"]
    assert (run.path / registry.WEIGHTS_FILE).read_bytes() == weights
    store.load_model("mine")  # its files still match their recorded hashes
    assert store.set_tags("mine", []).tags == ()
    # No temporary file is left beside the metadata.
    assert sorted(p.name for p in run.path.iterdir()) == sorted(
        [store.METADATA_FILE, *registry.MODELS["mlp"].files]
    )


@pytest.mark.parametrize(
    "tags, message",
    [
        ("ok, bad/slash", "Tag 'bad/slash' has characters"),
        ("x" * (store.MAX_TAG + 1), f"keep each tag to {store.MAX_TAG}"),
        ([f"t{i}" for i in range(store.MAX_TAGS + 1)], f"at most {store.MAX_TAGS}"),
    ],
)
def test_bad_tags_are_refused_and_nothing_changes(mlp, small, tags, message):
    save(mlp, small, name="mine")
    store.set_tags("mine", "kept")
    with pytest.raises(ConfigError, match=message):
        store.set_tags("mine", tags)
    assert store.open_run("mine").tags == ("kept",)


def test_a_failed_tag_write_leaves_the_old_metadata(mlp, small, monkeypatch):
    run = save(mlp, small, name="mine")
    before = (run.path / store.METADATA_FILE).read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(StorageError, match="Could not save the tags of mine"):
        store.set_tags("mine", "a")
    assert (run.path / store.METADATA_FILE).read_bytes() == before
    assert sorted(p.name for p in run.path.iterdir() if p.name.startswith(".")) == []


def test_delete_hides_the_run_at_once_even_if_removal_is_cut_short(
    mlp, small, runs, monkeypatch
):
    save(mlp, small, name="mine")
    monkeypatch.setattr(store.shutil, "rmtree", lambda *a, **k: None)  # cut short
    store.delete_run("mine")
    assert store.list_runs(include_pretrained=False) == ([], [])
    left = [p for p in runs.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(store.TMP_PREFIX)


def test_a_run_still_being_saved_cannot_be_renamed_or_deleted(mlp, small, runs):
    """A run is written in a hidden temporary folder and appears only once it is
    complete, so there is nothing half-saved that a rename or delete could reach."""
    save(mlp, small, name="done")
    half = runs / f"{store.TMP_PREFIX}abc123"
    (runs / "done").rename(half)  # as save_run's folder looks before its rename
    for change in (
        lambda: store.rename_run(half.name, "x"),
        lambda: store.delete_run(half.name),
        lambda: store.set_tags(half.name, "x"),
    ):
        with pytest.raises(ModelFileError, match="No run called"):
            change()
    assert (half / store.METADATA_FILE).is_file()


def test_sweep_trials_know_their_sweep(mlp, small):
    trial = save(mlp, small, name="sweep-a-s0", command="sweep sweep-a trial k1")
    own = save(mlp, small, name="mine", command="python -m digits train")
    assert trial.sweep == "sweep-a" and trial.summary()["sweep"] == "sweep-a"
    assert own.sweep is None
    # The sweep is read from what trained it, so a renamed trial stays in it.
    assert store.rename_run(trial, "renamed").sweep == "sweep-a"


@pytest.mark.parametrize(
    "validation, words",
    [
        ("test", "test images"),
        ("2000 test images", "test images"),
        ("the last 5,000 training images (held out, never trained on)",
         "held-out training images"),
        (None, "none"),
    ],
)  # fmt: skip
def test_validated_on_says_which_images(mlp, small, validation, words):
    assert save(mlp, small, validation=validation).validated_on == words


# -- predictions cache ------------------------------------------------------------


def test_predictions_are_cached(mlp, small, monkeypatch):
    run = save(mlp, small)
    first = store.predictions(run, small)
    assert first.shape == (len(small.x_test), 10) and first.dtype == np.float32
    np.testing.assert_allclose(first, mlp.predict_proba(small.x_test), rtol=1e-6)
    cached = list(run.path.glob("predictions-*.npy"))
    assert len(cached) == 1

    with monkeypatch.context() as patch:
        patch.setattr(store, "load_model", lambda *a, **k: pytest.fail("reloaded"))
        np.testing.assert_array_equal(store.predictions(run.name, small), first)

    cached[0].write_bytes(b"garbage")  # a damaged cache is recomputed, not trusted
    np.testing.assert_array_equal(store.predictions(run.name, small), first)
    assert np.load(cached[0]).shape == first.shape


# -- registry ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(registry.MODELS))
def test_every_kind_is_complete(kind):
    spec = registry.get(kind)
    names = set(spec.param_names())
    assert spec.label and spec.description and spec.files
    assert {hp.name for hp in spec.hyperparameters} <= names
    assert set(spec.defaults) <= names
    for preset in spec.presets:
        model = spec.build(preset)
        assert set(spec.presets[preset]) <= set(model.get_params())
    assert "default" in spec.presets
    for hp in spec.hyperparameters:
        assert hp.type in registry.PARSERS
        if hp.type in ("int", "float", "log", "layers"):
            assert hp.low is not None and hp.low < hp.high, hp.name
        if hp.type == "choice":
            assert hp.choices, hp.name


def test_dense_kind_has_no_convolutions():
    model = registry.get("dense").build("quick")
    assert model.conv_channels == ()
    with pytest.raises(ConfigError, match="no parameter conv_channels"):
        registry.get("dense").build(conv_channels=(8,))


def test_registry_errors():
    with pytest.raises(ConfigError, match="Kinds: cnn, dense, mlp"):
        registry.get("svm")
    with pytest.raises(ConfigError, match="Unknown preset"):
        registry.get("mlp").params("huge")
    with pytest.raises(ConfigError, match="no parameter"):
        registry.get("mlp").params(conv_channels=(8,))


def test_hyperparameter_parsing():
    mlp = registry.get("mlp")
    assert mlp.hyperparameter("hidden_layer_sizes").parse("256, 128") == (256, 128)
    assert mlp.hyperparameter("hidden_layer_sizes").parse("100") == (100,)
    assert mlp.hyperparameter("alpha").parse("1e-3") == 1e-3
    assert mlp.hyperparameter("early_stopping").parse("yes") is True
    assert registry.get("cnn").hyperparameter("kernel_size").parse("5") == 5
    for name, text in [("alpha", "lots"), ("activation", "swish"), ("max_iter", "2.5")]:
        with pytest.raises(ConfigError, match=name):
            mlp.hyperparameter(name).parse(text)


# -- the shipped models -----------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_default_models(name, mnist):
    run = store.open_run(name)
    assert run.pretrained and run.meta["dataset"]["name"] == "mnist"
    for entry in run.meta["files"].values():
        assert entry["bytes"] < 2_000_000
    assert run.meta["dataset"]["checksum"] == mnist.checksum
    accuracy = np.mean(store.load_model(name).predict(mnist.x_test) == mnist.y_test)
    assert accuracy == pytest.approx(run.test_accuracy, abs=1e-9)
    assert accuracy >= 0.97


def test_default_means_the_shipped_cnn():
    assert store.open_run("default").name == "default-cnn"


def test_preferred_is_the_shipped_run_of_a_kind_else_the_newest(mlp, small):
    older = save(mlp, small, name="older")
    newer = save(mlp, small, name="newer")
    shipped = store.open_run("default-mlp")
    runs = [newer, older]  # newest first, as list_runs gives them
    assert store.preferred(runs, "mlp") == newer
    assert store.preferred([*runs, shipped], "mlp") == shipped
    assert store.preferred(runs, "cnn") is None
