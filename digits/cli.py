"""The command line: ``python -m digits`` (or ``digits``) and its commands.

    digits train --model mlp --dataset mnist --preset default
    digits evaluate default
    digits predict default my-seven.png
    digits runs
    digits runs --rename OLD NEW | --tag RUN "a, b" | --delete RUN [--yes]
    digits completion bash

Progress and log messages go to stderr and results to stdout; with ``--json``
stdout holds exactly one JSON object. ``-v`` shows what happens behind the scenes
(downloads, fallbacks, clean-ups: the ``logging`` records of ``digits``), ``-vv``
also the debugging detail. Every error is one line on stderr, never a traceback
(``--debug`` shows it), and the exit status says whose it is (``exit_status``):
2 for bad usage (argparse's errors, and an invalid option value: ``ConfigError``),
1 for a command that could not be carried out (a file that cannot be read, a run
that does not exist, a failed download, training that diverged, a bug).
``predict`` reads every file it is given: one that is blank or unreadable gets an
error entry (a line on stderr, and in the JSON) while the others are still
predicted, and the status is then 1. Each prediction says whether it is sure
(`digits.sure`): "7 (not sure)" when the image does not look like a digit the
model knows or the model hesitates. During training, Ctrl-C stops after the
current batch and still saves the model trained so far; a second Ctrl-C aborts
without saving.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from digits import __version__, registry, store, training
from digits.errors import ConfigError, DigitsError, StorageError
from digits.humanize import duration, plural
from digits.nn.callbacks import Callback, StopOnEvent

EXIT_FAILURE = 1  # the command could not be carried out (see exit_status)
EXIT_USAGE = 2  # bad usage: argparse's status, and an invalid option value
EXIT_SOME_FAILED = 1  # predict: some files could not be read (the rest were predicted)
EXIT_INTERRUPTED = 130  # the shell's convention for a process ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # the shell's status for a process ended by SIGPIPE
BAR_WIDTH = 24
REDRAW_SECONDS = 0.1  # redraw a live progress bar at most this often
# Extra flag spellings for some hyperparameters.
ALIASES = {"max_iter": ["--epochs"]}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- progress ---------------------------------------------------------------------


class ProgressBar(Callback):
    """Text progress on a stream: a live bar per epoch on a terminal, and one line
    per finished epoch with loss, accuracy, validation accuracy and ETA."""

    def __init__(self, epochs: int, header: str = "", stream: TextIO | None = None):
        self.epochs, self.header = epochs, header
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._shown = 0  # length of the live line now on screen
        self._drawn_at = 0.0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        if self.header:
            self._write(self.header, end="\n")

    def _line(self, epoch: int, fraction: float, logs: dict, eta: float) -> str:
        filled = round(BAR_WIDTH * fraction)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = (
            f"epoch {epoch + 1}/{self.epochs} [{bar}]"
            f" {fraction:4.0%} loss {logs['loss']:.4f} acc {logs['accuracy']:.4f}"
        )
        if "val_accuracy" in logs:
            text += f" val_acc {logs['val_accuracy']:.4f}"
        return text + f" ETA {duration(eta)}"

    def _write(self, text: str, end: str = "") -> None:
        pad = max(0, self._shown - len(text))
        self.stream.write(("\r" if self.live else "") + text + " " * pad + end)
        self.stream.flush()
        self._shown = 0 if end else len(text)

    def on_batch_end(self, step, logs):
        now = time.perf_counter()
        if not self.live or now - self._drawn_at < REDRAW_SECONDS:
            return
        self._drawn_at = now
        fraction = logs["batch"] / logs["batches"]
        eta = logs["seconds"] * (1 - fraction) / max(fraction, 1e-9)
        self._write(self._line(int(logs["epoch"]), fraction, logs, eta))

    def on_epoch_end(self, epoch, logs):
        per_epoch = (time.perf_counter() - self.start) / (epoch + 1)
        eta = per_epoch * max(0, self.epochs - epoch - 1)
        self._write(
            self._line(epoch, 1.0, logs, eta) + f" ({logs['seconds']:.1f}s)", end="\n"
        )


class _CtrlC:
    """SIGINT during training: the first sets the stop event, the second aborts."""

    def __init__(
        self,
        stream: TextIO | None = None,
        message: str = "Stopping after this batch; the model trained so far will be "
        "saved.",
    ) -> None:
        self.event = threading.Event()
        self.stream = stream or sys.stderr
        self.message = message

    def __enter__(self) -> _CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            self.stream.write("\nAborted: nothing was saved.\n")
            # SystemExit, not KeyboardInterrupt: scikit-learn's partial_fit swallows
            # KeyboardInterrupt and would carry on.
            raise SystemExit(EXIT_INTERRUPTED)
        self.event.set()
        self.stream.write(f"\n{self.message} Press Ctrl-C again to abort.\n")


# -- output -----------------------------------------------------------------------


def _emit_json(obj: dict) -> None:
    print(json.dumps(store.jsonable(obj), allow_nan=False))


def _print_report(report: dict, class_names: Sequence[str]) -> None:
    print(f"Accuracy: {report['accuracy']:.2%} on {report['n']} test images")
    print(f"Loss (cross-entropy): {report['loss']:.4f}\n")
    width = max(5, *(len(c) for c in class_names))
    print(f"{'class':<{width}}  precision  recall     f1  support")
    for row in report["per_class"]:
        print(
            f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}"
            f"  {row['f1']:5.3f}  {row['support']:7d}"
        )
    macro = report["macro"]
    print(
        f"{'macro':<{width}}  {macro['precision']:9.3f}  {macro['recall']:6.3f}"
        f"  {macro['f1']:5.3f}\n"
    )
    matrix = np.asarray(report["confusion_matrix"])
    cell = max(len(str(matrix.max())), *(len(c) for c in class_names)) + 1
    print("Confusion matrix (rows: true class, columns: predicted class)")
    print(" " * width + "".join(f"{c:>{cell}}" for c in class_names))
    for name, row in zip(class_names, matrix, strict=True):
        print(f"{name:>{width}}" + "".join(f"{v:>{cell}d}" for v in row))


def _download_progress(done: int, total: int | None, filename: str) -> None:
    total_text = f" of {total / 1e6:.1f} MB" if total else ""
    sys.stderr.write(f"\rdownloading {filename}: {done / 1e6:.1f} MB{total_text}")
    if total and done >= total:
        sys.stderr.write("\n")


def _load_dataset(name: str):
    from digits.data import load_dataset

    _check_dataset_name(name)
    return load_dataset(name, progress=_download_progress)


def _check_dataset_name(name: str) -> None:
    """ConfigError (bad usage) for a --dataset that is neither a dataset's name
    nor a .csv file; whether the file can be read is for loading to say."""
    from digits.data import DATASETS

    if name not in DATASETS and not str(name).lower().endswith(".csv"):
        raise ConfigError(
            f"Unknown dataset {name!r}. Valid names: {', '.join(DATASETS)}, or a "
            "path to a .csv file."
        )


# -- commands ---------------------------------------------------------------------


def _hyperparameters(
    args: argparse.Namespace, kind: registry.ModelKind, parse=None
) -> dict:
    """The hyperparameter flags given on the command line, parsed for ``kind``
    (by ``parse(hp, text)``; default: one value each). A switch's value is
    already a bool; ``--augment``'s "shift" is the usual augmentation, True."""
    given = {}
    for name in _all_hyperparameters():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in {hp.name for hp in kind.hyperparameters}:
            raise ConfigError(f"{_flag(name)} does not apply to --model {kind.name}.")
        hp = kind.hyperparameter(name)
        if isinstance(value, bool):
            given[name] = value
        elif parse is not None:
            given[name] = parse(hp, value)
        elif name == "augment":
            given[name] = _augment(hp, value)
        else:
            given[name] = hp.parse(value)
    return given


def _augment(hp: registry.Hyperparameter, text: str) -> bool | str:
    """``--augment``'s value: "shift" (True, the usual), "writers", or the
    older true/false; ConfigError in the command line's words otherwise."""
    if text.strip().lower() == AUGMENT_SHIFT:
        return True
    try:
        return hp.parse(text)
    except ConfigError:
        raise ConfigError(
            f"Invalid value {text!r} for --augment: use --augment (or "
            "--augment shift) to shift and rotate, --augment writers to vary "
            "the writing too, or --no-augment."
        ) from None


def _tensorboard(folder: str) -> Callback:
    """The TensorBoard callback writing to ``folder``, refused before training if
    tensorboardX is missing or the folder cannot be made."""
    try:
        import tensorboardX  # noqa: F401

        from digits.tensorboard import TensorBoard
    except ImportError:
        raise DigitsError(
            "--tensorboard needs the tensorboardX package: pip install tensorboardX"
        ) from None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise StorageError(
            f"Cannot write TensorBoard logs to {folder} ({err.strerror})."
        ) from err
    return TensorBoard(folder)


def _cluster_client(args: argparse.Namespace):
    """The Dask client to train on when ``$DIGITS_SCHEDULER`` is set (None: train
    here, saying why on stderr if a scheduler was set)."""
    from digits import cluster

    if cluster.address() is None:
        return None
    if args.out or args.tensorboard:
        why = "--out" if args.out else "--tensorboard"
        print(
            f"{cluster.SCHEDULER_ENV} is set, but this model trains on this "
            f"machine: {why} writes to this machine's disk as it trains.",
            file=sys.stderr,
        )
        return None
    # None if the scheduler cannot be reached; digits.cluster's warning says so.
    remote = cluster.client()
    if remote is not None:
        print(f"Training on the Dask cluster at {cluster.address()}.", file=sys.stderr)
    return remote


def _train_on_cluster(args, kind, params, dataset, progress, stop) -> store.Run:
    """Train on the Dask cluster (a ``TrainingJob``, as the dashboard does),
    printing each epoch as it ends; the run comes back to this machine's runs
    folder."""
    from digits.training_job import TrainingJob

    job = TrainingJob(
        kind.name,
        dataset,
        kind.params(args.preset, **params),
        train_size=args.train_size,
        name=args.name,
        validation_size=None,  # all the held-out images, as train_run here
        live=False,
        preset=args.preset,
        command=args.command_line,
    ).start()
    progress.on_train_begin()
    shown, finished, told = 0, False, None
    while not finished:
        finished = job.join(0.25)
        if stop.is_set():
            job.stop()
        snap = job.snapshot()
        notice = snap.fallback or snap.notice  # it trains here, or started again
        if notice and notice != told:
            print(notice, file=sys.stderr)
            told = notice
        epochs = snap.epochs  # once more after the end: the last ones
        for epoch in range(shown, len(epochs)):
            progress.on_epoch_end(epoch, epochs[epoch])
        shown = len(epochs)
    snap = job.snapshot()
    if snap.status == "failed":
        raise DigitsError(snap.error)
    return snap.run


def cmd_train(args: argparse.Namespace) -> int:
    kind = registry.get(args.model)
    params = _hyperparameters(args, kind)
    # The estimator's own default when neither the kind nor the preset sets it.
    epochs = kind.build(args.preset, **params).get_params().get("max_iter", 1)
    board = _tensorboard(args.tensorboard) if args.tensorboard else None
    dataset = _load_dataset(args.dataset)
    images = training.plan(dataset, args.train_size)
    progress = ProgressBar(
        epochs,
        header=f"Training {kind.label} on {len(images.train):,} {dataset.name} images "
        f"for up to {epochs} epochs; validating on {images.described} (val_*); "
        "Ctrl-C stops early and saves.",
    )
    callbacks = [progress] if board is None else [progress, board]
    remote = _cluster_client(args)
    with _CtrlC() as ctrl_c:
        if remote is not None:
            run = _train_on_cluster(args, kind, params, dataset, progress, ctrl_c.event)
        else:
            run = training.train_run(
                kind.name,
                dataset,
                preset=args.preset,
                params=params,
                callbacks=[*callbacks, StopOnEvent(ctrl_c.event)],
                train_size=args.train_size,
                name=args.name,
                out=args.out,
                overwrite=args.overwrite,
                command=args.command_line,
            )
    summary = run.summary()
    last = (run.meta.get("history") or [{}])[-1]
    if args.json:
        _emit_json(
            summary
            | {
                "run": str(run.path),
                "test_loss": run.meta["test"]["loss"],
                "val_accuracy": last.get("val_accuracy"),
                "validation": run.meta.get("validation"),
                "params": run.meta["params"],
                "n_train": run.meta["dataset"]["n_train"],
                "tensorboard": args.tensorboard,
            }
        )
    else:
        stopped = f", stopped: {summary['stopped']}" if summary["stopped"] else ""
        if "val_accuracy" in last:
            print(
                f"Validation accuracy {last['val_accuracy']:.2%} on "
                f"{run.meta['validation']}"
            )
        print(
            f"Saved run {run.name} in {run.path}\n"
            f"Test accuracy {summary['test_accuracy']:.2%} on the "
            f"{len(dataset.x_test):,} test images, scored once after "
            f"{plural(summary['epochs'], 'epoch')} "
            f"({duration(summary['train_seconds'])}{stopped})"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digits import metrics

    run = store.open_run(args.run, allow_paths=True)
    dataset = _load_dataset(args.dataset or run.meta["dataset"]["name"])
    proba = store.predictions(run, dataset)
    report = metrics.report(dataset.y_test, proba, dataset.class_names)
    if args.json:
        _emit_json(
            {"run": str(run.path), "name": run.name, "dataset": dataset.name} | report
        )
        return 0
    print(f"Run {run.name} ({run.meta.get('label', run.kind)}) on {dataset.name}")
    _print_report(report, dataset.class_names)
    return 0


def _read_images(paths: Sequence[str], side: int) -> tuple[dict, dict]:
    """Each file preprocessed to a (side, side) model input, or its error.

    Returns ({index: (side, side) float32 image}, {index: one-line message});
    every file is read, whatever happened to the others.
    """
    from digits.errors import PreprocessError
    from digits.preprocess import preprocess

    images, errors = {}, {}
    for k, path in enumerate(paths):
        try:
            images[k] = preprocess(path, side, name=path).image
        except (PreprocessError, OSError) as err:  # this file only: go on
            errors[k] = _one_line(err)
            print(f"digits: error: {errors[k]}", file=sys.stderr)
    return images, errors


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict each file; a file that cannot be read (blank, not an image,
    missing) gets an error entry and a line on stderr, the others are still
    predicted, and the status is then `EXIT_SOME_FAILED`."""
    from digits import sure

    run = store.open_run(args.run, allow_paths=True)
    height, width = run.image_shape
    if height != width:
        raise ConfigError(
            f"Run {run.name} takes {height}x{width} images; predict needs a model "
            f"trained on square images."
        )
    images, errors = _read_images(args.images, height)
    results: list[dict] = [{"file": path} for path in args.images]
    for k, message in errors.items():
        results[k]["error"] = message
    if images:
        model = store.load_model(run)
        order = sorted(images)
        batch = np.stack([images[k] for k in order])  # (n, side, side)
        proba = store.predict_proba_full(model, batch, len(run.class_names))
        thresholds = sure.thresholds_for(run, model)
        if not thresholds.measured:
            also = (
                ", on an image the digit detector accepts"
                if thresholds.min_digit
                else ""
            )
            print(
                f"digits: note: {run.name}'s validation images could not be "
                f"loaded; 'sure' means a top probability of at least "
                f"{sure.FALLBACK_CONFIDENCE:.0%}{also}.",
                file=sys.stderr,
            )
        sures = sure.is_sure(batch, proba, thresholds)
        for k, p, is_sure in zip(order, proba, sures, strict=True):
            results[k]["label"] = run.class_names[int(p.argmax())]
            results[k]["sure"] = bool(is_sure)
            results[k]["probabilities"] = [float(v) for v in p]
    status = EXIT_SOME_FAILED if errors else 0
    if args.json:
        _emit_json({"run": str(run.path), "name": run.name, "predictions": results})
        return status
    for r in results:
        if "error" in r:
            continue  # already on stderr
        probs = " ".join(
            f"{name}:{v:.3f}"
            for name, v in zip(run.class_names, r["probabilities"], strict=True)
        )
        label = r["label"] if r["sure"] else f"{r['label']} (not sure)"
        print(f"{r['file']}: {label}  ({probs})")
    return status


def _confirm_delete(name: str, yes: bool) -> None:
    """Ask before deleting run ``name`` on a terminal; ConfigError if the answer
    is not yes, or if there is no terminal to ask and ``--yes`` was not given."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(
            f"Deleting {name} cannot be undone; add --yes to confirm it when no "
            f"one is at a terminal to answer."
        )
    answer = input(f"Delete run {name} and its files for good? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise DigitsError(f"Nothing deleted: {name} is kept.")  # status 1


def _change_run(args: argparse.Namespace) -> int:
    """``digits runs --rename/--tag/--delete``: change one run, say what was done."""
    if args.rename:
        old, new = args.rename
        run = store.rename_run(old, new)
        done = {"action": "rename", "from": old, "name": run.name}
        text = f"Renamed {old} to {run.name}."
    elif args.tag:
        name, tags = args.tag
        run = store.set_tags(name, tags)
        done = {"action": "tag", "name": run.name, "tags": list(run.tags)}
        text = f"{run.name} tags: {', '.join(run.tags) or '(none)'}."
    else:
        run = store.own_run(args.delete, "deleted")  # a shipped one: refused first
        _confirm_delete(run.name, args.yes)
        store.delete_run(run)
        done = {"action": "delete", "name": run.name}
        text = f"Deleted {run.name}."
    if args.json:
        _emit_json(done)
    else:
        print(text)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    if args.rename or args.tag or args.delete:
        return _change_run(args)
    runs, broken = store.list_runs()
    for b in broken:
        print(
            f"digits: skipped broken run {b.path}: {_one_line(b.error)}",
            file=sys.stderr,
        )
    summaries = [run.summary() for run in runs]
    if args.json:
        _emit_json(
            {
                "runs": summaries,
                "broken": [{"path": str(b.path), "error": b.error} for b in broken],
            }
        )
        return 0
    if not runs:
        print(f"No runs in {store.runs_dir()}. Train one: digits train --model mlp")
        return 0
    header = f"{'name':<42} {'kind':<6} {'dataset':<15} {'test acc':>8} {'epochs':>6}"
    print(header + "  created                    tags")
    for s in summaries:
        acc = f"{s['test_accuracy']:.2%}" if s["test_accuracy"] is not None else "-"
        print(
            f"{s['name']:<42} {s['kind']:<6} {s['dataset'] or '-':<15} {acc:>8} "
            f"{s['epochs']:>6}  {s['created'] or '-':<25}  {', '.join(s['tags'])}"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    run = store.convert_legacy_run(args.run, trust_pickle=args.trust_pickle)
    if args.json:
        _emit_json({"run": str(run.path), "name": run.name, "files": run.meta["files"]})
    else:
        print(f"Converted {run.path}: it now holds {', '.join(run.meta['files'])}.")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from digits import dashboard

    return dashboard.launch(args.host, args.port, headless=args.headless)


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from digits.nn.gradcheck import TOLERANCE, standard_checks

    checks = standard_checks()
    passed = all(check["passed"] for check in checks)
    if args.json:
        _emit_json({"passed": passed, "tolerance": TOLERANCE, "checks": checks})
    else:
        for check in checks:
            verdict = "ok  " if check["passed"] else "FAIL"
            print(f"{verdict} {check['max_relative_error']:9.2e}  {check['name']}")
        verdict = "All" if passed else "Not all"
        print(f"{verdict} gradients match finite differences (<= {TOLERANCE:g}).")
    return 0 if passed else 1


def cmd_completion(args: argparse.Namespace) -> int:
    """Print ``shtab``'s completion script for this parser: commands, options and
    their choices, with file and folder names where an argument is a path."""
    try:
        import shtab
    except ImportError:
        raise DigitsError(
            "digits completion needs the shtab package: pip install shtab"
        ) from None
    parser = build_parser()
    kinds = {"file": shtab.FILE, "dir": shtab.DIRECTORY}
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if getattr(action, "completes", None):
                action.complete = kinds[action.completes]  # type: ignore[attr-defined]
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from digits import experiments

    kind = registry.get(args.model)
    _check_dataset_name(args.dataset)
    grid = _hyperparameters(args, kind, parse=experiments.parse_values)
    sweep = experiments.plan(
        kind.name,
        grid,
        dataset=args.dataset,
        seeds=experiments.parse_seeds(args.seeds),
        train_size=args.train_size,
        name=args.name,
    )
    if args.n_jobs is not None and args.n_jobs < 1:
        raise ConfigError(f"--n-jobs must be 1 or more; got {args.n_jobs}.")
    dataset = _load_dataset(args.dataset)
    done = {r["key"] for r in experiments.read_results(sweep.results_path)}
    todo = [t for t in sweep.trials if t.key not in done]
    estimate = None
    if not args.scheduler:
        print("Timing a few batches of each configuration...", file=sys.stderr)
        estimate = experiments.estimate(sweep, dataset, args.n_jobs, skip=done)
    plan_text = (
        f"Sweep {sweep.name}: {len(sweep.trials)} trials of {kind.label} on "
        f"{sweep.train_size or len(dataset.x_train)} {dataset.name} images, "
        f"{len(todo)} to run"
    )
    if estimate is not None and todo:
        plan_text += (
            f", ~{duration(estimate.seconds)} with {estimate.n_jobs} at a time "
            f"({estimate.threads} thread(s) each)"
        )
    elif args.scheduler:
        plan_text += f" on the Dask cluster at {args.scheduler}"
    print(plan_text + ". Ctrl-C stops and keeps the finished trials.", file=sys.stderr)
    finished = len(sweep.trials) - len(todo)

    def report(row: dict) -> None:
        nonlocal finished
        finished += 1
        val = row.get("val_accuracy")
        result = (
            (f"validation {val:.2%}, " if val is not None else "")
            + f"test {row['test_accuracy']:.2%} in {row['train_seconds']:.1f}s"
            if row["status"] == "done"
            else f"failed: {_one_line(row.get('error'))}"
        )
        print(
            f"[{finished}/{len(sweep.trials)}] {row['label']} seed {row['seed']}: "
            f"{result}",
            file=sys.stderr,
        )

    if args.estimate_only:
        outcome = None
    else:
        stopping = (
            "Stopping the running trials after their current batch; the finished "
            "ones are kept."
        )
        with _CtrlC(message=stopping) as ctrl_c:
            outcome = experiments.run_sweep(
                sweep,
                dataset,
                n_jobs=args.n_jobs,
                scheduler=args.scheduler,
                stop=ctrl_c.event,
                on_result=report,
                plan_estimate=estimate,
            )
    rows = outcome.rows if outcome else []
    summary = {
        "sweep": sweep.name,
        "results": str(sweep.results_path),
        "kind": kind.name,
        "dataset": dataset.name,
        "trials": len(sweep.trials),
        "estimate_seconds": estimate.seconds if estimate else None,
        "n_jobs": estimate.n_jobs if estimate else None,
    }
    if outcome is not None:
        summary |= {
            "seconds": outcome.seconds,
            "ran": outcome.ran,
            "skipped": outcome.skipped,
            "stopped": outcome.stopped,
            "interrupted": outcome.interrupted,
            "configurations": experiments.summarise(rows),
            "rows": rows,
        }
    if args.json:
        _emit_json(summary)
    elif outcome is not None:
        configurations = summary["configurations"]
        mean, spread, words = experiments.compared_by(configurations)
        if configurations:
            print(
                f"Each configuration's mean {words} over its seeds (± sd), then test:"
            )
        for c in configurations:
            print(
                f"{c['label']:<36} {c[mean]:.2%} ± {c[spread]:.2%}, test "
                f"{c['accuracy_mean']:.2%} ({c['n']} seeds, {c['n_params']:,} "
                f"parameters, {c['seconds_mean']:.1f}s)"
            )
        print(
            f"{outcome.ran} trials run, {outcome.skipped} already done, in "
            f"{duration(outcome.seconds)}. Results: {sweep.results_path}"
        )
    if outcome is not None and outcome.interrupted:
        print(
            f"Stopped: {outcome.stopped} trial(s) not finished. Run the same "
            f"command again to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


# -- parser -----------------------------------------------------------------------

# The examples that end each command's help, by command (a command that sets its
# own epilog keeps it).
EXAMPLES = {
    "train": """\
  digits train --model mlp --preset quick --epochs 5
  digits train --model cnn --train-size 5000 --augment writers --name small-cnn
  digits train --preset quick --tensorboard logs/quick   # tensorboard --logdir logs""",
    "evaluate": """\
  digits evaluate default
  digits evaluate small-cnn --dataset fashion-mnist --json""",
    "predict": """\
  digits predict default my-seven.png photo.jpg
  digits predict default-mlp scans/*.png --json""",
    "runs": """\
  digits runs --json
  digits runs --rename 20261205-120000-cnn-mnist best-cnn
  digits runs --tag best-cnn "baseline, demo"
  digits runs --delete old-run --yes""",
    "convert": """\
  digits convert old-mlp --trust-pickle
  digits convert runs/old-mlp --trust-pickle --json""",
    "gradcheck": """\
  digits gradcheck
  digits gradcheck --json""",
    "sweep": """\
  digits sweep --model mlp --hidden-layer-sizes "30;100" --seeds 3 --estimate-only
  digits sweep --conv-channels "(8,),(16,)" --train-size 5000 --epochs 1
  digits sweep --model mlp --alpha "1e-4,1e-2" --scheduler tcp://10.0.0.5:8786""",
    "app": """\
  digits app
  digits app --port 8502 --headless
  digits app --host 0.0.0.0   # every network interface: read the README first""",
    "completion": """\
  source <(digits completion bash)         # this shell only
  digits completion bash > ~/.local/share/bash-completion/completions/digits
  digits completion zsh > "${fpath[1]}/_digits"   # then start a new zsh""",
}
EXAMPLES["dashboard"] = EXAMPLES["app"]
SHELLS = ("bash", "zsh")
# What a value of --augment means: the model's usual shift and rotate, or a style.
AUGMENT_SHIFT = "shift"


def _as_text(value) -> str:
    """A hyperparameter's value as it is typed on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _kind_defaults(name: str) -> str:
    """Each kind's default for hyperparameter ``name``, e.g. "cnn, dense 0.002;
    mlp 0.001" (building the estimators, so only when help is shown)."""
    by_value: dict[str, list[str]] = {}
    for kind in registry.MODELS.values():
        if any(hp.name == name for hp in kind.hyperparameters):
            value = kind.build().get_params()[name]
            if name == "augment":
                value = {False: "off", True: AUGMENT_SHIFT}.get(value, value)
            by_value.setdefault(_as_text(value), []).append(kind.name)
    if len(by_value) == 1:
        return next(iter(by_value))
    return "; ".join(f"{', '.join(kinds)} {value}" for value, kinds in by_value.items())


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps each line of a description or epilog that starts in the first column
    and keeps indented lines (the examples) as written; ends each option's help
    with its default (a hyperparameter's, per kind) unless the help says it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            indent + line
            if line[:1].isspace() or not line
            else textwrap.fill(
                line, width, initial_indent=indent, subsequent_indent=indent
            )
            for line in text.splitlines()
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default is argparse.SUPPRESS
        ):
            return text
        if getattr(action, "hyperparameter", None):
            shown = _kind_defaults(action.hyperparameter).replace("%", "%%")
        elif isinstance(action.default, bool):
            shown = _as_text(action.default)
        elif action.default is None:
            return text
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: the help formatter above, and -v/--debug, which are
    accepted after the command as well as before it."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)
        _add_common_flags(self, argparse.SUPPRESS)  # keep main's values if absent


def _add_common_flags(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if default is None else default,
        help="show downloads, fallbacks and clean-ups on stderr; -vv also the "
        "debugging detail (default: warnings only)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if default is None else default,
        help="show the traceback of an error (default: off)",
    )


def _all_hyperparameters() -> dict[str, registry.Hyperparameter]:
    """Every hyperparameter of every kind, by name (the first kind's wording)."""
    found: dict[str, registry.Hyperparameter] = {}
    for kind in registry.MODELS.values():
        for hp in kind.hyperparameters:
            found.setdefault(hp.name, hp)
    return found


def _hp_help(name: str, hp: registry.Hyperparameter, values: str = "") -> str:
    """Help for a flag: label, accepted values (over all kinds, unless ``values``
    words them) and the kinds."""
    specs = {
        kind.name: kind.hyperparameter(name)
        for kind in registry.MODELS.values()
        if any(h.name == name for h in kind.hyperparameters)
    }
    detail = hp.label
    if values:
        detail += f" ({values})"
    elif hp.type == "choice":
        choices = dict.fromkeys(c for spec in specs.values() for c in spec.choices)
        detail += " (" + "|".join(map(str, choices)) + ")"
    elif hp.type == "layers":
        detail += " (comma-separated widths)"
    if hp.help:
        detail += ". " + hp.help
    return f"{detail} [{', '.join(specs)}]"


def _add_hyperparameter_flags(
    group, metavar: str, skip: Sequence[str] = (), switches: bool = False
) -> None:
    """One flag per hyperparameter of any kind (``--conv-channels``...). With
    ``switches``, an on/off one is ``--x/--no-x`` and augment is
    ``--augment [shift|writers]/--no-augment``; otherwise each takes a value."""
    for name, hp in _all_hyperparameters().items():
        if name in skip:
            continue
        flags = [_flag(name), *ALIASES.get(name, [])]
        if switches and name == "augment":
            both = group.add_mutually_exclusive_group()
            both.add_argument(
                *flags,
                dest=name,
                nargs="?",
                const=AUGMENT_SHIFT,
                metavar="shift|writers",
                help=_hp_help(name, hp, values="shift|writers; bare: shift"),
            ).hyperparameter = name
            both.add_argument(
                "--no-" + _flag(name)[2:],
                dest=name,
                action="store_false",
                default=None,
                help="turn augmentation off (default: see --augment)",
            )
            continue
        if switches and hp.type == "bool":
            action = group.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                help=_hp_help(name, hp),
            )
        else:
            action = group.add_argument(
                *flags, dest=name, metavar=metavar, help=_hp_help(name, hp)
            )
        action.hyperparameter = name


def _datasets_help(what: str) -> str:
    from digits.data import DATASETS

    return f"{', '.join(DATASETS)} or a .csv file{what}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits",
        description="Train, evaluate and try handwritten-digit classifiers.",
        epilog="Run 'digits COMMAND --help' for a command's options and examples.\n"
        "Exit status: 0 done, 1 the command failed, 2 bad usage, 130 Ctrl-C.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    _add_common_flags(parser, None)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    train = sub.add_parser("train", help="train a model and save it as a run")
    train.add_argument(
        "--model", default="cnn", choices=list(registry.MODELS), help="model kind"
    )
    train.add_argument("--dataset", default="mnist", help=_datasets_help(""))
    presets = sorted({p for k in registry.MODELS.values() for p in k.presets})
    train.add_argument(
        "--preset",
        choices=presets,
        help="named hyperparameter set (default: none, the kind's own defaults)",
    )
    train.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="train on N random images (default: all but the validation images)",
    )
    where = train.add_mutually_exclusive_group()
    where.add_argument("--name", help="run name (default: time-model-dataset)")
    where.add_argument(
        "--out", metavar="DIR", help="save the run to exactly DIR (default: none)"
    ).completes = "dir"
    train.add_argument(
        "--overwrite", action="store_true", help="with --out: replace DIR if it exists"
    )
    train.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write loss, accuracy and learning rate per batch and per epoch "
        "as TensorBoard event files in DIR (default: none)",
    ).completes = "dir"
    train.add_argument("--json", action="store_true", help="print one JSON object")
    hyper = train.add_argument_group(
        "hyperparameters (each applies to some models; default: the kind's, or "
        "its --preset's)"
    )
    _add_hyperparameter_flags(hyper, "VALUE", switches=True)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a run on a test set")
    evaluate.add_argument("run", help="run name, folder, or 'default'")
    evaluate.add_argument(
        "--dataset", help=_datasets_help(" (default: the run's own dataset)")
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser(
        "predict",
        help="classify image files",
        description="Read each image as a digit. An answer is 'not sure' when the "
        "model hesitates or the image does not look like a digit (thresholds "
        "from the run's validation images). A file that cannot be read gets "
        "its own error; the others are still predicted, and the status is 1.",
    )
    predict.add_argument("run", help="run name, folder, or 'default'")
    predict.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files"
    ).completes = "file"
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.set_defaults(func=cmd_predict)

    runs = sub.add_parser(
        "runs",
        help="list the saved runs, or rename, tag or delete one",
        description="Without options: list the saved runs. The shipped models "
        "(default-cnn, default-mlp) cannot be renamed, tagged or deleted.",
    )
    change = runs.add_mutually_exclusive_group()
    change.add_argument(
        "--rename",
        nargs=2,
        metavar=("RUN", "NEW_NAME"),
        help="rename a run (default: none)",
    )
    change.add_argument(
        "--tag",
        nargs=2,
        metavar=("RUN", "TAGS"),
        help='set a run\'s tags, separated by commas ("" removes them) (default: none)',
    )
    change.add_argument(
        "--delete", metavar="RUN", help="delete a run for good (default: none)"
    )
    runs.add_argument(
        "--yes", action="store_true", help="with --delete: do not ask to confirm"
    )
    runs.add_argument("--json", action="store_true", help="print one JSON object")
    runs.set_defaults(func=cmd_runs)

    convert = sub.add_parser(
        "convert",
        help="rewrite a run saved by an older digits as a pickle in today's format",
        description="Runs saved by digits 0.1 hold the MLP as a pickle "
        "(model.joblib), which digits no longer loads: unpickling a file runs any "
        "code its author put in it. This command unpickles one, once, and saves "
        "it as JSON and .npz. Use it only on a file you made or trust.",
    )
    convert.add_argument("run", help="run name or folder")
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="confirm that you trust whoever made the run's model.joblib",
    )
    convert.add_argument("--json", action="store_true", help="print one JSON object")
    convert.set_defaults(func=cmd_convert)

    gradcheck = sub.add_parser("gradcheck", help="check the NumPy network's gradients")
    gradcheck.add_argument("--json", action="store_true", help="print one JSON object")
    gradcheck.set_defaults(func=cmd_gradcheck)

    sweep = sub.add_parser(
        "sweep", help="train a grid of configurations for several seeds each"
    )
    sweep.add_argument(
        "--model", default="cnn", choices=list(registry.MODELS), help="model kind"
    )
    sweep.add_argument("--dataset", default="mnist", help=_datasets_help(""))
    sweep.add_argument(
        "--seeds", default="2", help="a number of seeds (3) or a list (0,5,7)"
    )
    sweep.add_argument(
        "--train-size",
        type=int,
        metavar="N",
        help="train on N random images (default: all but the validation images)",
    )
    sweep.add_argument(
        "--n-jobs", type=int, metavar="N", help="trials at once (default: cores)"
    )
    sweep.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on this Dask scheduler (default: none, on this computer)",
    )
    sweep.add_argument(
        "--name", help="sweep name (default: from the grid; the same grid resumes)"
    )
    sweep.add_argument(
        "--estimate-only", action="store_true", help="print the estimate, train nothing"
    )
    sweep.add_argument("--json", action="store_true", help="print one JSON object")
    grid = sweep.add_argument_group(
        "grid (values separated by ';' or ','; layer lists as \"(),(16,),(32,64)\"; "
        "on/off values as true,false)"
    )
    _add_hyperparameter_flags(grid, "VALUES", skip=("random_state",))
    sweep.set_defaults(func=cmd_sweep)

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a script that completes digits' commands, options and "
        "values as you press Tab. Load it in your shell's start-up file.",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete")
    completion.set_defaults(func=cmd_completion)
    dash = sub.add_parser(
        "app",
        aliases=["dashboard"],
        help="serve the dashboard (this computer only, by default)",
        description="Serve the Streamlit dashboard, from a checkout or from the "
        "installed package (pip install 'digits[app]'). --host and --port are "
        "streamlit run's --server.address and --server.port, which are accepted "
        "too.",
    )
    dash.add_argument(
        "--host",
        "--server.address",
        dest="host",
        default="127.0.0.1",
        help="address to listen on: 127.0.0.1 (default) serves this computer only; "
        "0.0.0.0 serves every network interface (read the README first)",
    )
    dash.add_argument(
        "--port",
        "--server.port",
        dest="port",
        type=int,
        default=8501,
        help="TCP port (default 8501)",
    )
    dash.add_argument("--headless", action="store_true", help="do not open a browser")
    dash.set_defaults(func=cmd_dashboard)
    from digits.export import FORMATS

    export = sub.add_parser(
        "export",
        help="write a run as ONNX, PyTorch or safetensors for other tools",
        description="Write a run's network for other tools. Every export takes "
        "float32 images (N, 1, 28, 28) in [0, 1], light ink on dark as after "
        "digits' preprocessing, and gives class probabilities (N, 10). Beside "
        "FILE go FILE.README.txt (the input note and the tensors) and, for torch "
        "and safetensors, the torch.nn module definition as <name>.py.",
        epilog="examples:\n"
        "  digits export default --format onnx --out digits-cnn.onnx\n"
        "  digits export default-mlp --format torch --out mlp.pt\n"
        "  digits export my-run --format safetensors --out my-run.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("run", help="run name, folder, or 'default'")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, metavar="FILE", help="file to write")
    export.add_argument(
        "--overwrite", action="store_true", help="replace FILE (and its companions)"
    )
    export.add_argument("--json", action="store_true", help="print one JSON object")
    export.set_defaults(func=cmd_export)
    for name, command in sub.choices.items():
        command.formatter_class = _HelpFormatter
        if command.epilog is None and name in EXAMPLES:
            command.epilog = "examples:\n" + EXAMPLES[name]
    return parser


def cmd_export(args: argparse.Namespace) -> int:
    """``digits export``: write the run with ``digits.export``. A format whose
    package is not installed is a failure (status 1) whose line names what to
    install."""
    from digits import export

    try:
        written = export.export(
            args.run, args.format, args.out, overwrite=args.overwrite
        )
    except export.MissingPackage as err:
        print(f"digits: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        _emit_json(
            {"run": args.run, "format": args.format, "files": list(map(str, written))}
        )
    else:
        also = ", ".join(str(path) for path in written[1:])
        print(f"Exported {args.run} as {args.format} to {written[0]} (and {also})")
    return 0


def exit_status(err: BaseException) -> int:
    """The exit status for an error a user can cause: ``EXIT_USAGE`` when the
    command line asked for something invalid (a ``ConfigError``: a value no option
    takes, a flag for another model, a name that is reserved, a change to a
    shipped model), ``EXIT_FAILURE`` when a valid command could not be carried out
    (any other ``DigitsError`` or ``OSError``: a file or run that cannot be read
    or does not exist, a download that failed, training that diverged)."""
    return EXIT_USAGE if isinstance(err, ConfigError) else EXIT_FAILURE


class _LogLine(logging.Formatter):
    """``digits: note: ...``, one line per record, as the CLI's errors are."""

    def format(self, record: logging.LogRecord) -> str:
        level = {"WARNING": "warning", "DEBUG": "debug"}.get(record.levelname, "note")
        return f"digits: {level}: {_one_line(record.getMessage())}"


class _ToStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (so a test that
    captures stderr, or calls ``main`` again, never meets a closed stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_LogLine())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbosity: int) -> None:
    """Show the ``digits`` loggers' records on stderr: warnings always, info with
    ``-v`` (downloads, fallbacks, clean-ups), debug with ``-vv``."""
    logger = logging.getLogger("digits")
    if not any(isinstance(h, _ToStderr) for h in logger.handlers):
        logger.addHandler(_ToStderr())
    logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done. 1: the command could not be carried out (see ``exit_status``), or an
    unexpected error (a bug, or the machine ran out of memory), shown as one line
    whose traceback ``--debug`` shows; or, for ``predict``, some files could not
    be read (each has its own error line; the others were predicted). 2: bad
    usage (argparse's convention), with a message that says what to do.
    130: Ctrl-C. 141: the reader of stdout went away.
    """
    given = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(given)  # exits 2 itself on bad arguments
    debug = args.debug
    configure_logging(args.verbose)
    args.command_line = shlex.join(["python", "-m", "digits", *given])
    try:
        return args.func(args)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        # Python's docs recipe: point stdout at devnull so the exit flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("\ndigits: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DigitsError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"digits: error: {_one_line(err)}", file=sys.stderr)
        return exit_status(err)
    except MemoryError:
        if debug:
            traceback.print_exc()
        print(
            "digits: error: out of memory. Use a smaller --train-size or "
            "--batch-size, or close other programs.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except Exception as err:  # a bug: one line, never a traceback, unless --debug
        if debug:
            traceback.print_exc()
        print(
            f"digits: unexpected error: {type(err).__name__}: {_one_line(err)} "
            f"(run again with --debug for the details, and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
