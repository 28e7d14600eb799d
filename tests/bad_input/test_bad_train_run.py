"""What a failed or odd training run leaves behind, through ``digits train``.

The estimators' own behaviour on bad sets and settings is in
``test_bad_training.py``; these cases check the run store's side: a training set
missing some classes still saves a run that ``predict`` accepts, and a run that
diverges or loses its second process says exactly what was saved, and that run
loads and predicts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from catalogue import FAILURE, assert_clean_error
from PIL import Image

from digits import store, training
from digits.data import load_dataset
from digits.errors import TrainingInterrupted
from digits.nn.callbacks import Callback

# A CNN small enough for 8x8 images.
SMALL = {
    "cnn": ["--conv-channels", "4", "--kernel-size", "3", "--hidden-layer-sizes", "16"],
    "mlp": ["--hidden-layer-sizes", "16"],
}


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("sklearn-digits")


@pytest.fixture
def png(tmp_path, digits8):
    """A real 8x8 digit (a 3), upscaled to a PNG as a user would give it."""
    index = int(np.flatnonzero(digits8.y_test == 3)[0])
    path = tmp_path / "three.png"
    Image.fromarray(digits8.x_test[index]).resize((64, 64)).save(path)
    return path


def two_class_csv(path, digits8, labels=(3, 7)):
    keep = np.isin(digits8.y_train, labels)
    x, y = digits8.x_train[keep].reshape(keep.sum(), -1), digits8.y_train[keep]
    rows = [
        ",".join(map(str, [label, *pixels])) for label, pixels in zip(y, x, strict=True)
    ]
    header = "label," + ",".join(f"pixel{i}" for i in range(64))
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_csv_of_two_digits_trains_a_run_predict_accepts(
    cli, runs, tmp_path, digits8, png, kind
):
    csv = two_class_csv(tmp_path / "threes-and-sevens.csv", digits8)
    # scikit-learn's MLP takes two batches an epoch here: it needs 30 epochs to
    # tell 3s from 7s (at 10 it still guesses digits it never saw).
    epochs = "30" if kind == "mlp" else "10"
    trained = cli(
        "train", "--model", kind, "--dataset", csv, "--epochs", epochs,
        *SMALL[kind], "--name", "two", "--json",
    )  # fmt: skip
    assert trained.code == 0, trained.err
    result = cli("predict", "two", png, "--json")
    assert result.code == 0, result.err
    [prediction] = json.loads(result.out)["predictions"]
    assert prediction["label"] in ("3", "7")


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_subset_missing_classes_saves_a_run_that_knows_every_class(
    cli, runs, png, kind
):
    """Twelve random images cannot hold all ten digits; the run still loads."""
    trained = cli(
        "train", "--model", kind, "--dataset", "sklearn-digits", "--train-size",
        "12", "--epochs", "1", *SMALL[kind], "--name", "few",
    )  # fmt: skip
    assert trained.code == 0, trained.err
    assert store.load_model("few").classes_.tolist() == list(range(10))
    assert cli("predict", "few", png).code == 0


def test_divergence_after_an_epoch_saves_the_kept_weights_and_says_where(
    cli, runs, png
):
    """A dense network at learning rate 16 trains one epoch, then explodes in the
    second: the weights from before the bad update are saved, marked, and named."""
    result = cli(
        "train", "--model", "dense", "--dataset", "sklearn-digits", "--epochs", "3",
        "--hidden-layer-sizes", "32", "--solver", "sgd", "--learning-rate-init",
        "16", "--name", "wild",
    )  # fmt: skip
    line = assert_clean_error(result, "diverged in epoch 2", code=FAILURE)
    [run], broken = store.list_runs(include_pretrained=False)
    assert broken == [] and run.name == "wild"
    assert f"saved as run wild in {run.path}" in line
    assert f"(test accuracy {run.test_accuracy:.2%}), marked 'diverged'" in line
    assert run.meta["stopped"] == "diverged" and len(run.meta["history"]) == 1
    assert cli("predict", "wild", png).code == 0


class _KillAfterEpoch(Callback):
    """Ends training as the trainer does when its second process dies after
    ``epoch`` epochs: the estimator keeps the finished epochs."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        if epoch + 1 == self.epoch:
            raise TrainingInterrupted(
                "The second training process stopped (killed by signal 9) in "
                f"epoch {epoch + 2}; the model holds the weights of epoch "
                f"{epoch + 1}.",
                usable=True,
            )


def test_a_second_process_dying_saves_the_finished_epochs(runs, digits8):
    with pytest.raises(TrainingInterrupted) as err:
        training.train_run(
            "cnn",
            digits8,
            params={"conv_channels": (4,), "hidden_layer_sizes": (16,), "max_iter": 3},
            callbacks=[_KillAfterEpoch(1)],
            name="killed",
        )
    assert err.value.usable
    run = store.open_run("killed")
    assert f"saved as run {run.name}" in str(err.value)
    assert run.meta["stopped"] == "second process died"
    assert store.load_model(run).predict(digits8.x_test[:5]).shape == (5,)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_nothing_usable_saves_nothing_and_says_so(cli, runs, kind):
    """Divergence in the very first update: the estimator's message says there is
    no model to save, once, and the runs folder stays empty."""
    result = cli(
        "train", "--model", kind, "--dataset", "sklearn-digits", "--epochs", "1",
        *SMALL[kind], "--solver", "sgd", "--learning-rate-init", "1e12",
    )  # fmt: skip
    line = assert_clean_error(result, "diverged", code=FAILURE)
    assert line.count("no model to") == 1 and "saved as run" not in line
    assert not any(runs.iterdir())
