"""Tests for the command line, run the way a user runs it: ``python -m digits``.

Training uses scikit-learn's 8x8 digits (a second or two); prediction uses real
MNIST test digits written as PNG files and the shipped default model. Error cases
run in-process through ``main()`` for speed, and a few also as real processes to
show that nothing but a one-line message reaches the terminal. Ctrl-C is tested
by sending SIGINT to a real training process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digits import store
from digits.cli import EXIT_FAILURE, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, runs: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, store.RUNS_DIR_ENV: str(runs)}
    return subprocess.run(
        [sys.executable, "-m", "digits", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args, runs: Path) -> subprocess.Popen:
    env = {**os.environ, store.RUNS_DIR_ENV: str(runs)}
    return subprocess.Popen(
        [sys.executable, "-m", "digits", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, prefix: str) -> str:
    for line in proc.stderr:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the process ended without printing {prefix!r}")


def one_json_object(stdout: str) -> dict:
    """stdout must be exactly one JSON object (json.loads rejects trailing data)."""
    obj = json.loads(stdout)
    assert isinstance(obj, dict)
    return obj


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def trained(shared_runs) -> dict:
    """One MLP trained through the CLI on the 8x8 digits, with --json."""
    result = run_cli(
        "train", "--model", "mlp", "--dataset", "sklearn-digits", "--preset", "quick",
        "--epochs", "4", "--name", "cli-mlp", "--json",
        runs=shared_runs,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"json": one_json_object(result.stdout), "stderr": result.stderr}


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """A fresh runs dir for in-process calls of main()."""
    root = tmp_path / "runs"
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def mnist_pngs(tmp_path_factory, mnist) -> tuple[list[Path], list[int]]:
    """The first ten MNIST test digits as PNG files, and their labels."""
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i in range(10):
        path = folder / f"mnist-{i}.png"
        Image.fromarray(mnist.x_test[i]).save(path)
        paths.append(path)
    return paths, mnist.y_test[:10].tolist()


# -- train, evaluate, runs, predict -----------------------------------------------


def test_train_json(trained, shared_runs):
    out = trained["json"]
    assert out["name"] == "cli-mlp" and out["kind"] == "mlp"
    assert Path(out["run"]) == shared_runs / "cli-mlp"
    assert (Path(out["run"]) / "metadata.json").is_file()
    assert out["test_accuracy"] > 0.5 and out["train_seconds"] > 0
    assert out["epochs"] == 4 and out["params"]["max_iter"] == 4
    # The progress (stderr) shows every epoch with loss, accuracy and ETA.
    for epoch in range(1, 5):
        assert f"epoch {epoch}/4 [" in trained["stderr"]
    assert "loss" in trained["stderr"] and "ETA" in trained["stderr"]


def test_evaluate(trained, shared_runs):
    result = run_cli("evaluate", "cli-mlp", "--json", runs=shared_runs)
    assert result.returncode == 0, result.stderr
    report = one_json_object(result.stdout)
    assert report["accuracy"] == pytest.approx(trained["json"]["test_accuracy"])
    assert [row["class"] for row in report["per_class"]] == list("0123456789")
    assert np.sum(report["confusion_matrix"]) == report["n"] == 360


def test_evaluate_text(trained, shared_runs, monkeypatch, capsys):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(shared_runs))
    assert main(["evaluate", "cli-mlp"]) == 0
    text = capsys.readouterr().out
    assert f"Accuracy: {trained['json']['test_accuracy']:.2%}" in text
    assert "precision" in text and "recall" in text and "Confusion matrix" in text


def test_runs_lists_saved_runs(trained, shared_runs):
    result = run_cli("runs", "--json", runs=shared_runs)
    listing = one_json_object(result.stdout)
    names = [r["name"] for r in listing["runs"]]
    assert "cli-mlp" in names and "default-mlp" in names
    mine = listing["runs"][names.index("cli-mlp")]
    assert mine["test_accuracy"] == pytest.approx(trained["json"]["test_accuracy"])


def test_runs_text(trained, shared_runs, monkeypatch, capsys):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(shared_runs))
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "kind", "dataset", "test"]
    row = next(line for line in lines if line.startswith("cli-mlp"))
    assert f"{trained['json']['test_accuracy']:.2%}" in row


def test_predict_default_on_mnist_pngs(mnist_pngs, runs):
    paths, labels = mnist_pngs
    result = run_cli("predict", "default", *paths, "--json", runs=runs)
    assert result.returncode == 0, result.stderr
    out = one_json_object(result.stdout)
    preds = out["predictions"]
    assert [p["file"] for p in preds] == [str(p) for p in paths]
    for p in preds:
        assert len(p["probabilities"]) == 10
        assert sum(p["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert p["label"] == str(int(np.argmax(p["probabilities"])))
    correct = sum(p["label"] == str(y) for p, y in zip(preds, labels, strict=True))
    assert correct >= 9
    # Real test digits: the answers are sure (about 99% of them are).
    assert all(isinstance(p["sure"], bool) for p in preds)
    assert sum(p["sure"] for p in preds) >= 9


def test_predict_text(mnist_pngs, runs, capsys):
    paths, labels = mnist_pngs
    assert main(["predict", "default-mlp", str(paths[0])]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{paths[0]}: {labels[0]}  (0:")


def test_gradcheck_json(runs):
    result = run_cli("gradcheck", "--json", runs=runs)
    assert result.returncode == 0, result.stderr
    out = one_json_object(result.stdout)
    assert out["passed"] is True and len(out["checks"]) > 5


# -- errors -----------------------------------------------------------------------


def assert_one_line_error(code, capsys, *fragments, status=EXIT_USAGE) -> str:
    """One ``digits: error:`` line on stderr, nothing on stdout, exit ``status``
    (2: bad usage; 1: a failure, such as a run that does not exist)."""
    captured = capsys.readouterr()
    assert code == status, captured.err
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digits: error: "), captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--dataset", "nope"], ["Unknown dataset 'nope'"]),
        (["--conv-channels", "8"], ["--conv-channels does not apply to --model mlp"]),
        (["--alpha", "lots"], ["Invalid value 'lots' for alpha"]),
        (["--activation", "swish"], ["activation", "identity"]),
        (["--train-size", "0"], ["train_size"]),
        (["--solver", "lbfgs"], ["Invalid value 'lbfgs'"]),
    ],
)
def test_train_errors(args, fragments, runs, capsys):
    code = main(["train", "--model", "mlp", "--dataset", "sklearn-digits", *args])
    assert_one_line_error(code, capsys, *fragments)
    assert not runs.exists() or not list(runs.iterdir())


def test_out_that_exists_is_refused(runs, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    args = ["train", "--model", "mlp", "--dataset", "sklearn-digits", "--epochs", "1"]
    code = main([*args, "--out", str(tmp_path / "taken")])
    err = assert_one_line_error(code, capsys, "already exists")
    assert str(tmp_path / "taken") in err


def test_unknown_run(runs, capsys):
    code = main(["evaluate", "nope"])
    assert_one_line_error(code, capsys, "No run called 'nope'", status=EXIT_FAILURE)
    code = main(["predict", "nope", "x.png"])
    assert_one_line_error(code, capsys, "No run called", status=EXIT_FAILURE)


def bad_files(folder: Path) -> dict[str, Path]:
    """A file of each kind predict cannot read: not an image, missing, blank."""
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    blank = folder / "blank.png"
    Image.new("L", (28, 28)).save(blank)
    return {"not a png": garbage, "no such file": folder / "missing.png",
            "blank": blank}  # fmt: skip


def test_unreadable_missing_or_blank_image_alone(runs, tmp_path, capsys):
    for fragment, path in bad_files(tmp_path).items():
        assert main(["predict", "default", str(path)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        (line,) = captured.err.strip().splitlines()
        assert line.startswith("digits: error: ") and str(path) in line
        assert fragment in line.lower()


def test_bad_files_among_good_ones_get_their_own_entries(
    mnist_pngs, runs, tmp_path, capsys
):
    """Every file is answered: the good ones predicted, each bad one an error
    entry and a line on stderr, in the order given; the status is 1."""
    paths, labels = mnist_pngs
    bad = bad_files(tmp_path)
    given = [paths[0], bad["not a png"], paths[1], bad["no such file"], bad["blank"]]
    assert main(["predict", "default", "--json", *map(str, given)]) == 1
    captured = capsys.readouterr()
    preds = one_json_object(captured.out)["predictions"]
    assert [p["file"] for p in preds] == [str(p) for p in given]
    assert [p["label"] for p in preds[0:3:2]] == [str(labels[0]), str(labels[1])]
    assert all(p["sure"] is True and "error" not in p for p in preds[0:3:2])
    for p, path in zip(preds[1::2] + preds[4:], given[1::2] + given[4:], strict=True):
        assert set(p) == {"file", "error"} and str(path) in p["error"]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("digits: error: ") for line in lines)
    assert "Traceback" not in captured.err

    # Without --json: a line per good file on stdout, the errors on stderr.
    assert main(["predict", "default", *map(str, given)]) == 1
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert [line.split(":")[0] for line in out] == [str(paths[0]), str(paths[1])]
    assert len(captured.err.strip().splitlines()) == 3


def test_a_blot_and_noise_are_not_sure(mnist_pngs, runs, tmp_path, capsys):
    """Not a digit: the best guess is kept, marked not sure (JSON and text)."""
    dot = tmp_path / "dot.png"
    page = np.full((100, 100), 230, np.uint8)
    page[40:56, 50:66] = 20  # a 16x16 blot of ink
    Image.fromarray(page).save(dot)
    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 60), dtype=np.uint8)).save(noise)
    assert main(["predict", "default", "--json", str(dot), str(noise)]) == 0
    preds = one_json_object(capsys.readouterr().out)["predictions"]
    assert [p["sure"] for p in preds] == [False, False]
    assert all(p["label"] in "0123456789" for p in preds)
    assert main(["predict", "default", str(dot), str(mnist_pngs[0][0])]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith(f"{dot}: {preds[0]['label']} (not sure)  (0:")
    assert "(not sure)" not in second


def test_corrupt_run(trained, shared_runs, runs, capsys):
    import shutil

    copy = runs / "corrupt"
    shutil.copytree(shared_runs / "cli-mlp", copy)
    model = copy / "weights.npz"
    model.write_bytes(model.read_bytes()[:-10])
    code = main(["evaluate", "corrupt"])
    err = assert_one_line_error(code, capsys, "truncated", status=EXIT_FAILURE)
    assert str(model) in err

    # `runs` still works and reports the broken run on stderr.
    assert main(["runs"]) == 0
    captured = capsys.readouterr()
    assert "skipped broken run" in captured.err and str(copy) in captured.err


def test_run_for_other_images(trained, shared_runs, capsys, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(shared_runs))
    code = main(["evaluate", "cli-mlp", "--dataset", "mnist"])
    assert_one_line_error(code, capsys, "8x8 images", "28x28", status=EXIT_FAILURE)


def test_bad_arguments_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "svm"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'svm'" in err and "Traceback" not in err


def test_real_process_errors_have_no_traceback(tmp_path):
    for args in (["train", "--model", "svm"], ["train", "--dataset", "nope"]):
        result = run_cli(*args, runs=tmp_path)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("digits")
        assert result.stdout == ""


# -- Ctrl-C -----------------------------------------------------------------------


def test_ctrl_c_stops_and_saves(tmp_path, mnist):
    runs = tmp_path / "runs"
    proc = start_cli(
        "train", "--model", "mlp", "--dataset", "mnist", "--train-size", "10000",
        "--hidden-layer-sizes", "64", "--epochs", "200", "--json",
        runs=runs,
    )  # fmt: skip
    try:
        wait_for_line(proc, "epoch 1/200")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Stopping after this batch" in err and "Traceback" not in err
    result = one_json_object(out)
    assert result["stopped"] == "interrupted"
    assert 1 <= result["epochs"] < 200
    run = store.open_run(result["run"], allow_paths=True)
    assert run.path.parent == runs
    model = store.load_model(run)
    accuracy = np.mean(model.predict(mnist.x_test) == mnist.y_test)
    assert accuracy == pytest.approx(result["test_accuracy"])


def test_second_ctrl_c_aborts_without_saving(tmp_path):
    runs = tmp_path / "runs"
    proc = start_cli(
        "train", "--model", "mlp", "--dataset", "mnist", "--hidden-layer-sizes",
        "256", "--epochs", "200",
        runs=runs,
    )  # fmt: skip
    try:
        wait_for_line(proc, "Training")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Aborted: nothing was saved." in err and "Traceback" not in err
    assert not runs.exists() or list(runs.iterdir()) == []


# -- runs: rename, tag, delete ----------------------------------------------------


@pytest.fixture
def own_run(runs) -> str:
    """A small MLP saved as run "mine" in a fresh runs dir."""
    from digits import data, registry

    small = data.load_dataset("sklearn-digits")
    model = registry.get("mlp").build(hidden_layer_sizes=(8,), max_iter=2)
    store.save_run(model.fit(small.x_train, small.y_train), kind="mlp",
                   dataset=small, name="mine")  # fmt: skip
    return "mine"


def test_runs_rename_tag_and_delete(own_run, runs, capsys):
    assert main(["runs", "--rename", "mine", "my best run"]) == 0
    assert capsys.readouterr().out.strip() == "Renamed mine to my-best-run."
    assert main(["runs", "--tag", "my-best-run", "baseline, demo", "--json"]) == 0
    out = one_json_object(capsys.readouterr().out)
    assert out == {"action": "tag", "name": "my-best-run", "tags": ["baseline", "demo"]}
    assert main(["runs"]) == 0
    row = next(
        line for line in capsys.readouterr().out.splitlines() if "my-best-run" in line
    )
    assert row.endswith("baseline, demo")
    assert main(["runs", "--delete", "my-best-run", "--yes"]) == 0
    assert capsys.readouterr().out.strip() == "Deleted my-best-run."
    assert list(runs.iterdir()) == []


def test_runs_delete_asks_first(own_run, runs, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["runs", "--delete", "mine"]) == EXIT_FAILURE  # not done, as asked
    assert "Nothing deleted: mine is kept." in capsys.readouterr().err
    assert store.open_run("mine")
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["runs", "--delete", "mine"]) == 0
    assert not (runs / "mine").exists()


def test_runs_delete_without_a_terminal_needs_yes(own_run, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main(["runs", "--delete", "mine"]) == EXIT_USAGE
    assert "add --yes" in capsys.readouterr().err
    assert store.open_run("mine")


@pytest.mark.parametrize(
    "args, message, status",
    [
        (["--delete", "default-cnn", "--yes"], "default-cnn is a shipped model", 2),
        (["--rename", "default-mlp", "x"], "default-mlp is a shipped model", 2),
        (["--tag", "default", "x"], "default-cnn is a shipped model", 2),
        (["--rename", "mine", "default"], "reserved for the shipped models", 2),
        (["--rename", "ghost", "x"], "No run called 'ghost'", 1),
        (["--tag", "mine", "a/b"], "Tag 'a/b' has characters", 2),
    ],
)
def test_runs_changes_that_are_refused(own_run, runs, args, message, status, capsys):
    assert main(["runs", *args]) == status
    err = capsys.readouterr().err
    assert err.startswith("digits: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert [p.name for p in runs.iterdir()] == ["mine"]
    assert store.open_run("mine").tags == ()
