"""Saved models ("runs"): one folder each, written atomically, checked when read.

A run is a folder under the runs directory (``$DIGITS_RUNS_DIR``, default
``./runs``) holding the model's files (see ``digits.registry``) and
``metadata.json``, which records everything needed to use it: the model kind and
hyperparameters, the dataset and its checksum, the image shape and class names,
the history per epoch, the test metrics and training time, library versions,
the creation time, a format version, and the SHA-256 and size of every model
file.

Writing: everything goes into a hidden temporary folder inside the runs
directory, which is then renamed into place in one step, so a run is either
complete or absent, even with several processes saving at once. Run names are
sanitised and made unique (``20261122-101500-mlp-mnist``, then ``-2``, ``-3``...).

Reading: a run whose metadata is missing, unreadable, of another format version
or whose files are missing or truncated raises ``ModelFileError`` naming the
file; ``list_runs`` reports such runs instead of failing. No model file is ever
unpickled: weights are ``.npz`` loaded with ``allow_pickle=False`` and settings
are JSON. Before any model file is used, its SHA-256 is checked against the
metadata, which catches a file damaged or changed since it was saved (the hash
does not prove who wrote it; that is why nothing is unpickled).

Managing: ``rename_run``, ``set_tags`` and ``delete_run`` change a run in one
atomic step each and refuse the shipped models. A sweep's trials are runs like
any other; ``Run.sweep`` names the sweep a run belongs to.

Training a model, scoring it and saving it as a run is ``digits.training``.

The default models ship with the package under ``digits/pretrained/`` in the same
format; ``RUN`` arguments may be ``default`` (the CNN if shipped, else the MLP),
``default-cnn`` or ``default-mlp``.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from digits import __version__, files, registry
from digits.errors import ConfigError, ModelFileError, StorageError

log = logging.getLogger(__name__)  # clean-ups and fallbacks: the CLI's -v shows them
FORMAT_VERSION = 1
RUNS_DIR_ENV = "DIGITS_RUNS_DIR"
METADATA_FILE = "metadata.json"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
# Names that RUN arguments resolve to shipped models; "default" takes the first
# of these that is present.
DEFAULT_RUNS = {"default-cnn": "cnn", "default-mlp": "mlp"}
DEFAULT_ALIAS = "default"
TMP_PREFIX = ".tmp-"  # half-written runs; hidden, never listed
# A save takes seconds; a half-written run older than this was left by a process
# that died mid-save (killed, or the machine went down), and the next save removes it.
ABANDONED_SECONDS = 3600
CACHE_DIR = ".cache"  # predictions of the shipped models, under the runs dir
MAX_NAME = 100
MAX_SUFFIX = 10_000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Tags are short labels a person gives a run ("baseline", "for class"), kept in
# its metadata.json; the limits keep a list of them readable in one table cell.
MAX_TAGS = 20
MAX_TAG = 40
_TAG = re.compile(r"[\w .+-]+")  # letters (any alphabet), digits, space, . + _ -
# A sweep's trials are saved with the command "sweep <sweep name> trial <key>"
# (digits.experiments.trial); that is how a run is known to belong to a sweep.
_SWEEP_COMMAND = re.compile(r"sweep (\S+) trial \S")
# A metadata.json larger than this is not one digits wrote (the shipped MLP's is
# 10 kB); it is refused before it is read, so a planted file cannot exhaust memory.
MAX_METADATA_BYTES = 4 << 20
# Saving a run needs room for its files (the default CNN's are 0.8 MB, a large
# MLP's a few MB) and its prediction caches; below this much free space training
# is refused before it starts rather than lost when it ends.
MIN_FREE_BYTES = 64 << 20
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_TEXT_OR_NULL = {"type": ["string", "null"]}
# The one schema every run's metadata.json is checked against when it is read, so
# that one malformed run is reported by name instead of breaking the pages and
# commands that list runs. It names only what digits reads; other keys may exist.
METADATA_SCHEMA = {
    "type": "object",
    "required": [
        "format_version", "kind", "params", "dataset", "image_shape",
        "class_names", "history", "files",
    ],
    "properties": {
        "format_version": {"const": FORMAT_VERSION},
        "kind": {"type": "string"},
        "label": {"type": "string"},
        "params": {"type": "object"},
        "preset": _TEXT_OR_NULL,
        "dataset": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "checksum": _TEXT_OR_NULL,
                "n_train": {"type": "integer", "minimum": 0},
                "n_test": {"type": "integer", "minimum": 0},
            },
        },
        "image_shape": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,  # (height, width): digits saves greyscale images
            "items": {"type": "integer", "minimum": 1, "maximum": 4096},
        },
        "class_names": {
            "type": "array",
            "minItems": 2,
            "maxItems": 1000,
            "items": {"type": "string"},
        },
        "history": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": _NUMBER_OR_NULL,
            },
        },
        "validation": _TEXT_OR_NULL,
        "command": _TEXT_OR_NULL,
        "taught_on": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "tags": {
            "type": "array",
            "maxItems": MAX_TAGS,
            "items": {"type": "string", "maxLength": MAX_TAG},
        },
        "test": {
            "type": ["object", "null"],
            "required": ["accuracy", "loss"],
            "properties": {
                "accuracy": {"type": "number", "minimum": 0, "maximum": 1},
                "loss": _NUMBER_OR_NULL,
                "n": {"type": "integer", "minimum": 0},
                "per_class": {"type": "array", "items": {"type": "object"}},
                "macro": {"type": "object"},
                "confusion_matrix": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer"}},
                },
            },
        },
        "train_seconds": _NUMBER_OR_NULL,
        "stopped": _TEXT_OR_NULL,
        "versions": {"type": "object"},
        "created": _TEXT_OR_NULL,
        "files": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["sha256", "bytes"],
                "properties": {
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "bytes": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
}  # fmt: skip
_LIBRARIES = ("numpy", "scikit-learn", "scipy", "joblib", "pillow")


def runs_dir() -> Path:
    """The folder that holds the runs: ``$DIGITS_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def sanitize_name(name: str) -> str:
    """A safe folder name for a run: letters, digits, ``.``, ``_`` and ``-`` only.

    Path separators and other characters become ``-``, leading dots and dashes
    go (no hidden folders, no ``..``), and the name is cut to ``MAX_NAME``.
    Raises ConfigError if nothing usable is left or the name is reserved.
    """
    cleaned = _UNSAFE.sub("-", str(name))
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip(".-_")[:MAX_NAME].rstrip(".-_")
    if not cleaned:
        raise ConfigError(
            f"Run name {name!r} has no usable characters; use letters, digits, "
            f"'.', '_' or '-'."
        )
    if cleaned in DEFAULT_RUNS or cleaned == DEFAULT_ALIAS:
        raise ConfigError(
            f"Run name {cleaned!r} is reserved for the shipped models; choose another."
        )
    return cleaned


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, NumPy scalars as Python numbers and
    non-finite floats as None, so that it is strict JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "digits": __version__}
    for lib in _LIBRARIES:
        try:
            found[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            pass
    return found


# -- runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A saved model's folder and its metadata (the model itself: ``load_model``)."""

    path: Path
    meta: dict
    pretrained: bool = False

    @property
    def name(self) -> str:
        if self.pretrained:
            return next(n for n, d in DEFAULT_RUNS.items() if d == self.path.name)
        return self.path.name

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["image_shape"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])

    @property
    def test_accuracy(self) -> float | None:
        return (self.meta.get("test") or {}).get("accuracy")

    @property
    def validated_on(self) -> str:
        """Which images the run's validation figures (``val_*``) come from, in a
        few plain words: older runs were validated on test images."""
        source = self.meta.get("validation") or ""
        if source == "test" or source.endswith("test images"):
            return "test images"
        if not source or source.startswith("none"):
            return "none"
        return "held-out training images"

    @property
    def tags(self) -> tuple[str, ...]:
        """The labels given with ``set_tags`` (none for most runs)."""
        return tuple(self.meta.get("tags") or ())

    @property
    def sweep(self) -> str | None:
        """The name of the sweep this run is a trial of, or None."""
        match = _SWEEP_COMMAND.match(self.meta.get("command") or "")
        return match[1] if match else None

    def summary(self) -> dict:
        """The key facts, JSON-ready: what ``digits runs`` shows."""
        meta = self.meta
        return {
            "name": self.name,
            "kind": self.kind,
            "dataset": (meta.get("dataset") or {}).get("name"),
            "test_accuracy": self.test_accuracy,
            "epochs": len(meta.get("history") or []),
            "train_seconds": meta.get("train_seconds"),
            "created": meta.get("created"),
            "stopped": meta.get("stopped"),
            "tags": list(self.tags),
            "sweep": self.sweep,
            "pretrained": self.pretrained,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class BrokenRun:
    """A folder in the runs directory that cannot be used, and why.

    ``legacy`` is True for a run saved by digits 0.1 as a pickle, which can be
    retrained or converted; any other broken run is damaged.
    """

    path: Path
    error: str
    legacy: bool = False


class LegacyPickleRun(ModelFileError):
    """A run saved by an older digits as a pickle, which is never loaded."""


def _check_schema(meta: Any, path: Path) -> None:
    """ModelFileError naming ``path`` and the first field that breaks the schema."""
    import jsonschema  # imported here: only reading a run needs it

    validator = jsonschema.Draft202012Validator(METADATA_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(meta))
    if error is None:
        return
    where = ".".join(map(str, error.absolute_path)) or "the top level"
    raise ModelFileError(
        f"{path} is malformed at {where}: {_short(error.message)}. Delete the run "
        f"or train it again."
    )


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """``files.read_bounded``, with ModelFileError for a file that is not a
    regular one or is larger than ``limit``; FileNotFoundError passes through."""
    try:
        return files.read_bounded(path, limit)
    except files.NotAFile as err:
        raise ModelFileError(f"{what} {path} is {err.kind}, not a file.") from None
    except files.TooLarge:
        raise ModelFileError(
            f"{what} {path} is over {limit:,} bytes, far larger than digits writes."
        ) from None


@functools.lru_cache(maxsize=4096)
def _parse_meta(path: Path, key: tuple[int, int, int] | None) -> dict:
    """The metadata.json at ``path``, read and checked against the schema.

    Cached by the file's inode, modification time and size (``key``), because
    every page rerun lists the runs, and a sweep leaves hundreds: a rewritten
    file (saves replace it whole) is read again. Errors are not cached.
    """
    try:
        meta = files.read_json(path, MAX_METADATA_BYTES)
    except FileNotFoundError:
        raise ModelFileError(
            f"{path} is missing: {path.parent} is not a complete run. Delete the "
            f"folder or train again."
        ) from None
    except files.NotAFile as err:
        raise ModelFileError(
            f"Run metadata {path} is {err.kind}, not a file."
        ) from None
    except files.TooLarge:
        raise ModelFileError(
            f"Run metadata {path} is over {MAX_METADATA_BYTES:,} bytes, far larger "
            f"than digits writes."
        ) from None
    except OSError as err:
        raise ModelFileError(f"{path} cannot be read ({err}).") from err
    except (ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise ModelFileError(f"{path} is corrupt ({reason}). Delete the run.") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if isinstance(meta, dict) and version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {version!r}; this version of digits reads "
            f"version {FORMAT_VERSION}. Retrain the model or use a matching digits."
        )
    _check_schema(meta, path)
    return meta


def _read_meta(folder: Path, *, legacy_ok: bool = False) -> dict:
    """The run's metadata, checked; ModelFileError naming the file if unusable.

    ``legacy_ok`` accepts a run in the old pickled format (for its conversion).
    """
    path = folder / METADATA_FILE
    if not folder.is_dir():
        raise ModelFileError(f"Run folder {folder} does not exist.")
    try:
        info = os.stat(path)
    except OSError:  # uncached: _parse_meta says why, in the user's words
        meta = _parse_meta.__wrapped__(path, None)
    else:
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        meta = copy.deepcopy(_parse_meta(path, key))  # callers may change theirs
    if meta["kind"] not in registry.MODELS:
        raise ModelFileError(
            f"{path} names an unknown model kind {meta['kind']!r}; known kinds: "
            f"{', '.join(registry.MODELS)}."
        )
    legacy = registry.LEGACY_PICKLE_FILE in meta["files"]
    if legacy and not legacy_ok:
        retrain = meta.get("command") or f"digits train --model {meta['kind']}"
        raise LegacyPickleRun(
            f"{folder} was saved by an older digits as a pickle "
            f"({registry.LEGACY_PICKLE_FILE}), which digits no longer loads because "
            f"a pickle can run any code. Retrain it ({retrain}), or, only if you "
            f"trust whoever made that file: python -m digits convert {folder} "
            f"--trust-pickle"
        )
    names = (
        [registry.LEGACY_PICKLE_FILE] if legacy else registry.MODELS[meta["kind"]].files
    )
    for name in names:
        entry = meta["files"].get(name)
        file = folder / name
        if entry is None:
            raise ModelFileError(f"{path} does not record {name}. Delete the run.")
        if not file.is_file():
            raise ModelFileError(f"Model file {file} is missing. Delete the run.")
        if file.stat().st_size != entry["bytes"]:
            raise ModelFileError(
                f"Model file {file} is truncated or changed: {file.stat().st_size} "
                f"bytes, but {entry['bytes']} were saved. Delete the run."
            )
    return meta


def _pretrained_folder(name: str) -> Path:
    return PRETRAINED_DIR / DEFAULT_RUNS[name]


def _locate(ref: str | os.PathLike[str], allow_paths: bool) -> tuple[Path, bool]:
    """The folder run ``ref`` names and whether it is a shipped model (see
    ``open_run``); ModelFileError if there is no such run."""
    text = str(ref)
    if text == DEFAULT_ALIAS:
        present = [n for n in DEFAULT_RUNS if _pretrained_folder(n).is_dir()]
        if not present:
            raise ModelFileError(
                f"No default model is installed in {PRETRAINED_DIR}. Train one: "
                f"python -m digits train --model cnn --dataset mnist --preset "
                f"default --out {PRETRAINED_DIR / 'cnn'}"
            )
        text = present[0]
    if text in DEFAULT_RUNS:
        return _pretrained_folder(text), True
    root = runs_dir()
    # A plain name is looked up in the runs dir only; "../x" is never a name.
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", text) and (root / text).is_dir():
        return root / text, False
    if allow_paths and Path(text).is_dir():
        folder = Path(text)
        shipped = any(
            folder.resolve() == _pretrained_folder(n).resolve() for n in DEFAULT_RUNS
        )
        return folder, shipped
    raise ModelFileError(
        f"No run called {text!r} in {root}. `digits runs` lists the saved runs; "
        f"'default' is the shipped model."
    )


def open_run(ref: str | os.PathLike[str] | Run, *, allow_paths: bool = False) -> Run:
    """The run ``ref`` names, with its metadata checked.

    ``ref`` is a run name in ``runs_dir()``, ``default``, ``default-cnn`` or
    ``default-mlp``, or (with ``allow_paths=True``, as the CLI does) a path to a
    run folder anywhere. Raises ModelFileError if there is no such run or it is
    broken.
    """
    if isinstance(ref, Run):
        return ref
    folder, shipped = _locate(ref, allow_paths)
    return Run(folder, _read_meta(folder), pretrained=shipped)


def convert_legacy_run(
    ref: str | os.PathLike[str], *, trust_pickle: bool = False
) -> Run:
    """Rewrite a run saved in the old pickled MLP format in today's format.

    This unpickles the run's ``model.joblib``, which runs any code its author put
    in it, so it refuses unless ``trust_pickle``. The file must still match the
    SHA-256 its metadata records. The run is rewritten atomically: a copy is
    converted, then swapped in for the original.
    """
    folder, shipped = _locate(ref, allow_paths=True)
    if shipped:
        raise ConfigError(f"{folder} is a shipped model; it needs no conversion.")
    meta = _read_meta(folder, legacy_ok=True)
    legacy = registry.LEGACY_PICKLE_FILE
    if legacy not in meta["files"]:
        raise ConfigError(f"{folder} is already in today's format; nothing to do.")
    if not trust_pickle:
        registry.convert_legacy_mlp(folder, trust_pickle=False)  # explains, raises
    if files.sha256_file(folder / legacy) != meta["files"][legacy]["sha256"]:
        raise ModelFileError(
            f"Model file {folder / legacy} has changed since digits saved it: its "
            f"SHA-256 does not match {folder / METADATA_FILE}. It was not converted."
        )
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder.parent))
    try:
        copy = tmp / "run"
        shutil.copytree(folder, copy)
        registry.convert_legacy_mlp(copy, trust_pickle=True)
        meta["files"] = _file_records(copy, registry.MODELS[meta["kind"]].files)
        meta["converted_from"] = legacy
        (copy / METADATA_FILE).write_text(_metadata_text(meta), encoding="utf-8")
        _place(copy, folder, overwrite=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_run(folder, allow_paths=True)


def preferred(runs: Sequence[Run], kind: str) -> Run | None:
    """Of ``runs`` (newest first), the shipped run of ``kind``, else the newest
    of that kind; None if there is none."""
    of_kind = [run for run in runs if run.kind == kind]
    return next((run for run in of_kind if run.pretrained), None) or next(
        iter(of_kind), None
    )


def list_runs(
    root: str | os.PathLike[str] | None = None, *, include_pretrained: bool = True
) -> tuple[list[Run], list[BrokenRun]]:
    """The usable runs (newest first, shipped models last) and the broken ones.

    A broken run never raises here: it is returned in the second list with the
    reason, for the app to show.
    """
    root = Path(root) if root is not None else runs_dir()
    runs: list[Run] = []
    broken: list[BrokenRun] = []
    folders = sorted(root.iterdir()) if root.is_dir() else []
    for folder in folders:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            runs.append(Run(folder, _read_meta(folder)))
        except ModelFileError as err:
            broken.append(BrokenRun(folder, str(err), isinstance(err, LegacyPickleRun)))
    runs.sort(key=lambda run: str(run.meta.get("created", "")), reverse=True)
    if include_pretrained:
        for name in DEFAULT_RUNS:
            folder = _pretrained_folder(name)
            if not folder.is_dir():
                continue
            try:
                runs.append(Run(folder, _read_meta(folder), pretrained=True))
            except ModelFileError as err:
                broken.append(
                    BrokenRun(folder, str(err), isinstance(err, LegacyPickleRun))
                )
    return runs, broken


def load_model(ref: str | os.PathLike[str] | Run, *, allow_paths: bool = False):
    """The fitted estimator of run ``ref`` (see ``open_run``).

    Every model file's SHA-256 is checked against the metadata before it is read,
    and the model must match the recorded image shape and number of classes.
    Raises ModelFileError naming the file otherwise.
    """
    run = open_run(ref, allow_paths=allow_paths)
    kind = registry.MODELS[run.kind]
    _verify_files(run)
    model = kind.load(run.path)
    shape = tuple(int(s) for s in getattr(model, "input_shape_", ()))
    if math.prod(shape) != math.prod(run.image_shape) or len(model.classes_) != len(
        run.class_names
    ):
        raise ModelFileError(
            f"Model file {run.path / kind.files[0]} is incompatible with its "
            f"metadata: it takes {shape} images and {len(model.classes_)} classes, "
            f"the run records {run.image_shape} and {len(run.class_names)}."
        )
    return model


def _verify_files(run: Run) -> None:
    """ModelFileError unless every model file still has the SHA-256 recorded in
    the run's metadata (a file changed behind digits' back is never used)."""
    for name in registry.MODELS[run.kind].files:
        file = run.path / name
        if files.sha256_file(file) != run.meta["files"][name]["sha256"]:
            raise ModelFileError(
                f"Model file {file} has changed since digits saved it: its SHA-256 "
                f"does not match {run.path / METADATA_FILE}. It was not loaded, "
                f"because a file changed since it was saved may be damaged. Delete "
                f"the run or train it again."
            )


def check_compatible(run: Run, image_shape: Sequence[int], n_classes: int) -> None:
    """ModelFileError unless ``run`` takes ``image_shape`` images and ``n_classes``."""
    shape, classes = tuple(int(s) for s in image_shape), int(n_classes)
    if shape != run.image_shape or classes != len(run.class_names):
        size = "x".join(map(str, run.image_shape))
        raise ModelFileError(
            f"Run {run.name} ({run.path / METADATA_FILE}) takes {size} images with "
            f"{len(run.class_names)} classes; this data has "
            f"{'x'.join(map(str, shape))} images with {classes} classes. Use a run "
            f"trained on this dataset."
        )


# -- saving -----------------------------------------------------------------------


def _file_records(folder: Path, names: Sequence[str]) -> dict:
    """The SHA-256 and size of each model file, as metadata.json records them."""
    return {
        f: {
            "sha256": files.sha256_file(folder / f),
            "bytes": (folder / f).stat().st_size,
        }
        for f in names
    }


def _metadata_text(meta: dict) -> str:
    return json.dumps(jsonable(meta), indent=1, allow_nan=False)


def _rename_unique(tmp: Path, root: Path, base: str) -> Path:
    """Rename ``tmp`` to ``root/base``, or ``base-2``, ``base-3``... if taken.

    ``os.rename`` of a folder is atomic and fails if the target is a non-empty
    folder, so two processes can never both claim a name.
    """
    for n in range(1, MAX_SUFFIX):
        target = root / (base if n == 1 else f"{base}-{n}")
        try:
            os.rename(tmp, target)
            return target
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
    raise ModelFileError(f"Too many runs named {base} in {root}; choose a name.")


def _is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a digits run (its metadata.json says so) or empty:
    the only things ``--overwrite`` may replace."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    try:
        meta = files.read_json(folder / METADATA_FILE, MAX_METADATA_BYTES)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "kind" in meta


def check_out(out: str | os.PathLike[str], overwrite: bool) -> None:
    """ConfigError unless a run may be saved to exactly ``out``: it must not
    exist, or (with ``overwrite``) be a digits run or an empty folder."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise ConfigError(
            f"{out} already exists. Choose another --out, or add --overwrite to "
            f"replace the run there."
        )
    if not _is_run_folder(out):
        raise ConfigError(
            f"{out} is not a digits run (it has no metadata.json of one), so "
            f"--overwrite will not replace it. Choose another --out, or move it "
            f"away yourself."
        )


def _place(tmp: Path, out: Path, overwrite: bool) -> Path:
    """Rename ``tmp`` to ``out``; replace an existing ``out`` only if asked and
    only if it is a digits run (``check_out``)."""
    check_out(out, overwrite)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out.parent))
        os.rename(out, old / "old")
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:  # put the old run back: nothing is lost
            os.rename(old / "old", out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def save_run(
    model,
    *,
    kind: str,
    dataset,
    params: dict | None = None,
    preset: str | None = None,
    test: dict | None = None,
    train_seconds: float | None = None,
    n_train: int | None = None,
    stopped: str | None = None,
    validation: str | None = None,
    command: str | None = None,
    taught_on: Sequence[int] | None = None,
    name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Run:
    """Save a fitted ``model`` of ``kind`` as a new run; return it.

    dataset : a ``digits.data.Dataset`` (its name, checksum, image shape, classes).
    params : the hyperparameters (default: the model's own ``get_params()``).
    test : ``digits.metrics.report`` on the test set.
    command : the command line that trained the model, to reproduce it.
    taught_on : the ids of the saved drawings (``digits.handwriting``) the model
        learned from, kept as ``meta["taught_on"]`` (``digits.teach``).
    name : the run's folder name (sanitised); default timestamp-kind-dataset.
    out : an exact folder to save to instead (e.g. ``digits/pretrained/mlp``);
        it must not exist unless ``overwrite``.
    """
    spec = registry.get(kind)
    if params is None:
        params = {k: v for k, v in model.get_params().items() if k not in spec.fixed}
    now = datetime.now(UTC)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "label": spec.label,
        "params": params,
        "preset": preset,
        "dataset": {
            "name": dataset.name,
            "checksum": dataset.checksum,
            "n_train": len(dataset.x_train) if n_train is None else n_train,
            "n_test": len(dataset.x_test),
        },
        "image_shape": list(dataset.x_train.shape[1:]),
        "class_names": list(dataset.class_names),
        "history": list(getattr(model, "history_", [])),
        "validation": validation,
        "command": command,
        "test": test,
        "train_seconds": train_seconds,
        "stopped": stopped,
        "versions": _versions(),
        "created": now.isoformat(timespec="seconds"),
    }
    if taught_on is not None:
        meta["taught_on"] = sorted({int(i) for i in taught_on})
    root = Path(out).parent if out is not None else runs_dir()
    base = (
        sanitize_name(name)
        if name is not None
        else sanitize_name(f"{now:%Y%m%d-%H%M%S}-{kind}-{Path(dataset.name).stem}")
    )
    check_can_save(root)
    _remove_abandoned(root)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    try:
        _write_model(spec, model, tmp)
        meta["files"] = _file_records(tmp, spec.files)
        (tmp / METADATA_FILE).write_text(_metadata_text(meta), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a run is an ordinary folder
        if out is not None:
            folder = _place(tmp, Path(out), overwrite)
        else:
            folder = _rename_unique(tmp, root, base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_run(folder, allow_paths=True)


def _write_model(spec: registry.ModelKind, model, folder: Path) -> None:
    """``spec.save(model, folder)``; a full disk or a permission problem becomes
    a message that says nothing was saved (the half-written folder goes)."""
    try:
        spec.save(model, folder)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        raise StorageError(
            f"Could not save the run in {folder.parent}: {err.strerror}. Nothing "
            f"was saved and no other run was touched. Free some space (or choose "
            f"another folder with {RUNS_DIR_ENV}) and train again."
        ) from err


def check_can_save(root: str | os.PathLike[str] | None = None) -> None:
    """StorageError unless runs can be saved in ``root`` (default: the runs
    dir): it can be created, written to, and its disk has MIN_FREE_BYTES free.

    Called before training starts, so a full disk or a read-only folder is found
    in a second, not after an hour of training.
    """
    root = Path(root) if root is not None else runs_dir()
    fix = f"Set {RUNS_DIR_ENV} (or --out) to a folder you can write to."
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root, prefix=TMP_PREFIX):
            pass
    except FileExistsError:
        raise StorageError(
            f"The runs folder {root} is a file, not a folder. {fix}"
        ) from None
    except OSError as err:
        raise StorageError(
            f"Cannot write to the runs folder {root} ({err.strerror}). {fix}"
        ) from None
    free = shutil.disk_usage(root).free
    if free < MIN_FREE_BYTES:
        raise StorageError(
            f"Only {free / 1e6:.0f} MB free on the disk that holds {root}; saving "
            f"a run needs at least {MIN_FREE_BYTES / 1e6:.0f} MB. Free some "
            f"space, or set {RUNS_DIR_ENV} (or --out) to a folder on another disk."
        )


def _remove_abandoned(root: Path) -> None:
    """Delete half-written runs in ``root`` that are older than ABANDONED_SECONDS."""
    cutoff = time.time() - ABANDONED_SECONDS
    for tmp in root.glob(f"{TMP_PREFIX}*"):
        try:
            if tmp.is_dir() and tmp.stat().st_mtime < cutoff:
                shutil.rmtree(tmp, ignore_errors=True)
                log.info("Removed %s, a run left half-written", tmp)
        except OSError:
            continue  # another process removed it first


# -- moving a run between computers ------------------------------------------------
#
# A run trained on a Dask worker (``digits.cluster``) comes back as its files'
# bytes, because the worker may not share the server's disk. The server checks
# them as it checks any run it reads, then places them like ``save_run`` does: a
# run is listed complete or not at all.

MAX_RUN_BYTES = 256 << 20  # far above any model this project trains


def pack_run(run: Run) -> dict[str, bytes]:
    """The files of ``run`` (its model files and metadata) as name -> bytes."""
    names = [*registry.MODELS[run.kind].files, METADATA_FILE]
    return {
        name: _read_bounded(run.path / name, MAX_RUN_BYTES, "run file")
        for name in names
    }


def receive_run(packed: dict[str, bytes], name: str) -> Run:
    """Save the files ``pack_run`` gave (on another computer) as a new run named
    ``name`` (sanitised, made unique) in the runs dir; return it.

    ModelFileError, and nothing saved, if the files are not exactly a run's or
    any file differs from the SHA-256 its metadata records.
    """
    root = runs_dir()
    check_can_save(root)
    if METADATA_FILE not in packed:
        raise ModelFileError(f"The run {name!r} sent back has no {METADATA_FILE}.")
    if sum(len(b) for b in packed.values()) > MAX_RUN_BYTES:
        raise ModelFileError(
            f"The run {name!r} sent back is over {MAX_RUN_BYTES >> 20} MB."
        )
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    try:
        for file, content in packed.items():
            # Only plain names: a file name can never reach outside the folder.
            if file != Path(file).name or file.startswith("."):
                raise ModelFileError(
                    f"The run {name!r} sent back a file named {file!r}."
                )
            (tmp / file).write_bytes(content)
        run = Run(tmp, _read_meta(tmp), pretrained=False)
        expected = {*registry.MODELS[run.kind].files, METADATA_FILE}
        if set(packed) != expected:
            raise ModelFileError(
                f"The run {name!r} sent back the files {sorted(packed)}; a "
                f"{run.kind} run has {sorted(expected)}."
            )
        _verify_files(run)
        os.chmod(tmp, 0o755)
        folder = _rename_unique(tmp, root, sanitize_name(name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_run(folder, allow_paths=True)


# -- managing runs ----------------------------------------------------------------
#
# Rename, tag and delete act on runs in the runs dir only: the shipped models are
# part of the package (often a read-only install) and the app's defaults, so they
# are refused with a message. A run appears in the runs dir only once it is fully
# saved (``save_run`` renames a complete folder into place), so a run still being
# trained or saved can be neither renamed nor deleted half-way; and each change
# below is one atomic step, so other sessions listing runs see the old state or the
# new one, never a mix.


def own_run(ref: str | Run, verb: str) -> Run:
    """The run ``ref`` names, if it may be ``verb`` ("renamed", "deleted"...):
    ConfigError if it is a shipped model, ModelFileError if there is none."""
    run = open_run(ref) if not isinstance(ref, Run) else ref
    if run.pretrained:
        raise ConfigError(
            f"{run.name} is a shipped model, kept as it came with the app (the "
            f"pages fall back to it): it cannot be {verb}. Your own runs can be."
        )
    return run


def _gone(run: Run) -> ModelFileError:
    """The error for a run that vanished between being listed and being changed."""
    return ModelFileError(
        f"Run {run.name} is gone from {run.path.parent}: another session renamed "
        f"or deleted it."
    )


def rename_run(ref: str | Run, new_name: str) -> Run:
    """Rename run ``ref`` to ``new_name`` (sanitised, as ``sanitize_name`` does);
    returns the renamed run.

    ConfigError if the run is shipped, the name has no usable characters or is
    reserved, or a run of that name exists. The folder is renamed in one step.
    """
    run = own_run(ref, "renamed")
    name = sanitize_name(new_name)
    if name == run.name:
        return run
    target = run.path.parent / name
    # os.rename would silently replace an empty folder of that name, so check
    # first; what could slip in between is only an empty folder, never a run.
    if target.exists() or target.is_symlink():
        raise ConfigError(
            f"A run called {name!r} already exists in {run.path.parent}; choose "
            f"another name."
        )
    try:
        os.rename(run.path, target)
    except FileNotFoundError:
        raise _gone(run) from None
    except OSError as err:
        raise StorageError(
            f"Could not rename {run.path} to {name} ({err.strerror})."
        ) from err
    return open_run(target, allow_paths=True)


def clean_tags(tags: str | Sequence[str]) -> list[str]:
    """``tags`` (a list, or one string separated by commas) as stored: trimmed,
    inner spaces collapsed, duplicates and empty ones dropped, in the order given.

    ConfigError naming the first tag that is too long or has other characters
    than letters, digits, spaces and ``. + _ -``, or if there are too many.
    """
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    cleaned: list[str] = []
    for item in items:
        tag = " ".join(str(item).split())
        if not tag or tag in cleaned:
            continue
        if len(tag) > MAX_TAG:
            raise ConfigError(
                f"Tag {tag!r} is {len(tag)} characters long; keep each tag to "
                f"{MAX_TAG}."
            )
        if not _TAG.fullmatch(tag):
            raise ConfigError(
                f"Tag {tag!r} has characters a tag cannot hold; use letters, "
                f"digits, spaces and . + _ - only (commas separate tags)."
            )
        cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise ConfigError(f"{len(cleaned)} tags given; a run holds at most {MAX_TAGS}.")
    return cleaned


def set_tags(ref: str | Run, tags: str | Sequence[str]) -> Run:
    """Replace the tags of run ``ref`` with ``tags`` (see ``clean_tags``); an
    empty list removes them. Returns the updated run.

    The metadata is rewritten atomically (a new file renamed over the old one);
    the model files, and so their recorded hashes, are untouched.
    """
    run = own_run(ref, "tagged")
    cleaned = clean_tags(tags)
    meta = _read_meta(run.path)  # fresh: another session may have changed it
    meta["tags"] = cleaned
    try:
        files.atomic_write(run.path / METADATA_FILE, _metadata_text(meta))
    except FileNotFoundError:
        raise _gone(run) from None
    except OSError as err:
        raise StorageError(
            f"Could not save the tags of {run.name} in {run.path} ({err.strerror})."
        ) from err
    return open_run(run.path, allow_paths=True)


def delete_run(ref: str | Run) -> None:
    """Delete run ``ref`` from the runs dir, whole (never a shipped model).

    The folder is first renamed to a hidden temporary name in one step, so the
    run disappears from every listing at once; only then are its files removed.
    If that removal is cut short, what is left stays hidden and the next save
    clears it away (``_remove_abandoned``).
    """
    run = own_run(ref, "deleted")
    trash = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=run.path.parent))
    try:
        os.rename(run.path, trash / "deleted")
    except FileNotFoundError:
        shutil.rmtree(trash, ignore_errors=True)
        raise _gone(run) from None
    except OSError as err:
        shutil.rmtree(trash, ignore_errors=True)
        raise StorageError(f"Could not delete {run.path} ({err.strerror}).") from err
    shutil.rmtree(trash, ignore_errors=True)


# -- predictions cache ------------------------------------------------------------


def predict_proba_full(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``model.predict_proba(X)`` as float32 (n, n_classes), column j = class j."""
    proba = model.predict_proba(X)
    cols = np.asarray(model.classes_).astype(np.int64)
    full = np.zeros((len(X), n_classes), dtype=np.float32)
    full[:, cols] = proba
    return full


def predictions(
    run: Run | str, dataset, model=None, proba: np.ndarray | None = None
) -> np.ndarray:
    """Test-set probabilities of ``run`` on ``dataset``, shape (n_test, k), float32.

    Computed once, then cached as ``.npy`` beside the run (for the shipped models:
    in the runs dir). The file's name holds a hash of its source (the dataset's
    checksum and the model files' SHA-256) and a hash of its own bytes, and a
    cache is used only if both match, its shape is right and it loads without
    pickle; anything else is computed afresh and the bad file removed. Pass
    ``model`` if it is already loaded, or ``proba`` if the probabilities
    (``predict_proba_full`` on the test set) are already computed.
    """
    run = open_run(run)
    check_compatible(run, dataset.x_test.shape[1:], len(dataset.class_names))
    _verify_files(run)  # the cache's key trusts the recorded hashes; check them
    model_sha = "".join(entry["sha256"] for entry in run.meta["files"].values())
    key = hashlib.sha256(f"{dataset.checksum}:{model_sha}".encode()).hexdigest()[:16]
    folder = runs_dir() / CACHE_DIR / run.name if run.pretrained else run.path
    expected = (len(dataset.x_test), len(dataset.class_names))
    for path in sorted(folder.glob(f"predictions-{key}-*.npy")):
        cached = _read_cache(path, expected)
        if cached is not None:
            return cached
        with contextlib.suppress(OSError):
            path.unlink()  # damaged or planted: never trusted again
    if proba is None:
        model = load_model(run) if model is None else model
        proba = predict_proba_full(model, dataset.x_test, expected[1])
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(proba, dtype=np.float32))
    data = buffer.getvalue()
    name = f"predictions-{key}-{hashlib.sha256(data).hexdigest()[:16]}.npy"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files.atomic_write(folder / name, data)
    except OSError as err:
        # A read-only run still works, just without the cache.
        log.info("Predictions not cached in %s (%s)", folder, err)
    return proba


def _read_cache(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The probabilities cached in ``path`` if its bytes still hash to the digest
    in its name and hold finite float32 of ``shape``; None otherwise."""
    digest = path.stem.rsplit("-", 1)[-1]
    limit = 4 * math.prod(shape) + 4096  # the array plus NumPy's header
    try:
        data = _read_bounded(path, limit, "Cache")
        if hashlib.sha256(data).hexdigest()[:16] != digest:
            return None
        cached = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError, ModelFileError):
        return None
    if cached.shape != shape or cached.dtype != np.float32:
        return None
    return cached if np.isfinite(cached).all() else None
