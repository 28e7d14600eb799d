"""TensorBoard logs: short real trainings on a few hundred MNIST images, read back
with TensorBoard's own EventAccumulator, as TensorBoard would read them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
)

from digits import registry, store  # noqa: E402
from digits.cli import main  # noqa: E402
from digits.tensorboard import TensorBoard  # noqa: E402

N_TRAIN = 300
BATCH_TAGS = {"batch_loss", "batch_accuracy", "batch_learning_rate"}
EPOCH_TAGS = {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard finds in ``folder``: tag -> [(step, value)]."""
    events = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0}
    )
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, mnist):
    """``digits train --tensorboard`` of the quick CNN: 2 epochs on 300 images."""
    root = tmp_path_factory.mktemp("tb")
    logs = root / "logs" / "quick"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store.RUNS_DIR_ENV, str(root / "runs"))
        args = ["train", "--preset", "quick", "--epochs", "2", "--batch-size", "64"]
        args += ["--train-size", str(N_TRAIN), "--tensorboard", str(logs), "--json"]
        code = main(args)
    assert code == 0
    meta = json.loads((next((root / "runs").iterdir()) / "metadata.json").read_text())
    return logs, meta


def test_the_cli_writes_train_and_validation_runs(cli_run):
    logs, _ = cli_run
    assert sorted(p.name for p in logs.iterdir()) == ["train", "validation"]
    assert set(scalars(logs / "train")) == BATCH_TAGS | EPOCH_TAGS
    assert set(scalars(logs / "validation")) == {"epoch_loss", "epoch_accuracy"}


def test_epoch_scalars_are_the_runs_history(cli_run):
    logs, meta = cli_run
    train, val = scalars(logs / "train"), scalars(logs / "validation")
    history = meta["history"]
    assert [step for step, _ in train["epoch_loss"]] == [1, 2]
    for key, folder, tag in [
        ("loss", train, "epoch_loss"),
        ("accuracy", train, "epoch_accuracy"),
        ("val_loss", val, "epoch_loss"),
        ("val_accuracy", val, "epoch_accuracy"),
    ]:
        got = [value for _, value in folder[tag]]
        assert got == pytest.approx([epoch[key] for epoch in history], rel=1e-6)


def test_batch_scalars_every_step_with_the_cosine_learning_rate(cli_run):
    logs, meta = cli_run
    train = scalars(logs / "train")
    per_epoch = math.ceil(N_TRAIN / 64)
    steps = [step for step, _ in train["batch_loss"]]
    assert steps == list(range(1, 2 * per_epoch + 1))
    # The last batch's running means are the epoch's.
    last = dict(train["batch_loss"])[per_epoch]
    assert last == pytest.approx(meta["history"][0]["loss"], rel=1e-6)
    rates = np.array([value for _, value in train["batch_learning_rate"]])
    lr0 = meta["params"].get("learning_rate_init", 2e-3)
    assert rates[0] == pytest.approx(lr0)  # cosine: starts at the set rate...
    assert np.all(np.diff(rates) < 0) and rates[-1] < lr0 / 10  # ...and falls to ~0
    epoch_rates = [value for _, value in train["epoch_learning_rate"]]
    assert epoch_rates == pytest.approx([rates[per_epoch - 1], rates[-1]])


def test_the_callback_for_python_users_with_the_mlp(tmp_path, mnist):
    """The scikit-learn MLP reports no learning rate in its logs: the callback
    reads it from the estimator (sgd with invscaling lowers it every chunk)."""
    model = registry.get("mlp").build(
        hidden_layer_sizes=(16,),
        max_iter=3,
        solver="sgd",
        learning_rate="invscaling",
        learning_rate_init=0.05,
    )
    board = TensorBoard(tmp_path / "mlp", estimator=model)
    x, y = mnist.x_train[:N_TRAIN], mnist.y_train[:N_TRAIN]
    model.fit(x, y, callbacks=[board])
    train = scalars(tmp_path / "mlp" / "train")
    assert [step for step, _ in train["epoch_loss"]] == [1, 2, 3]
    assert [v for _, v in train["epoch_loss"]] == pytest.approx(model.loss_curve_)
    rates = [value for _, value in train["epoch_learning_rate"]]
    assert rates[0] < 0.05 and rates == sorted(rates, reverse=True)
    assert board.writers == {}  # closed at the end of training


def test_train_run_hands_the_estimator_to_the_callback(tmp_path, mnist, monkeypatch):
    from digits import training

    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    board = TensorBoard(tmp_path / "logs")
    training.train_run(
        "mlp",
        mnist,
        params={"hidden_layer_sizes": (16,), "max_iter": 2},
        callbacks=[board],
        train_size=N_TRAIN,
    )
    train = scalars(tmp_path / "logs" / "train")
    assert [v for _, v in train["epoch_learning_rate"]] == pytest.approx([1e-3] * 2)


def test_an_unwritable_folder_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = ["train", "--model", "mlp", "--dataset", "sklearn-digits"]
    code = main([*args, "--tensorboard", str(blocker / "logs")])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("digits: error: Cannot write TensorBoard logs to")


def test_a_folder_with_events_already_gets_a_warning(tmp_path, caplog):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "events.out.tfevents.1.host").write_bytes(b"")
    board = TensorBoard(tmp_path)
    with caplog.at_level("WARNING", logger="digits"):
        board.on_train_begin()
    board.on_train_end()
    assert "already holds TensorBoard events" in caplog.text
