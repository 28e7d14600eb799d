"""The CNN's ``demo`` preset: in the registry, accepted by the CLI, and it learns.

Its target (99% on the MNIST test set within one epoch of the default preset's
time) is a benchmark, ``benchmarks/demo_preset.py``, not a unit test: here it
trains on a few thousand images, through ``digits train`` as a learner runs it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from digits import registry, store

REPO = Path(__file__).resolve().parents[1]
N_TRAIN = 3000  # a few seconds of training on two cores
CHANCE = 0.1  # ten classes


def test_the_demo_preset_is_a_smaller_cnn_than_the_default():
    cnn = registry.get("cnn")
    demo, default = cnn.params("demo"), cnn.params("default")
    assert demo["conv_channels"] == (16, 32)
    assert default["conv_channels"] == (32, 64)
    assert demo["max_iter"] == 2 and demo["learning_rate"] == "cosine"
    assert demo["augment"] is False
    model = cnn.build("demo")
    assert model.get_params()["learning_rate_init"] == demo["learning_rate_init"]


def test_the_demo_presets_batches_are_heavy_enough_for_the_second_process():
    # Its speed relies on it: on a thread the same epoch takes half as long again.
    from digits.engine.trainer import process_pays_off

    x, y = np.zeros((10, 28, 28), np.uint8), np.arange(10)
    demo = registry.get("cnn").build("demo", max_iter=1).fit(x, y)
    sample = np.zeros((28, 28, 1), np.float32)
    assert process_pays_off(demo.model_, sample, demo.batch_size, 55_000)
    assert not process_pays_off(demo.model_, sample, 64, 55_000)


def test_the_demo_preset_fits_mnist_but_not_the_8x8_digits():
    # 5x5 'valid' kernels, like the default's: nothing is left of an 8x8 image.
    cnn = registry.get("cnn")
    assert "demo" in cnn.presets_for((28, 28))
    assert "demo" not in cnn.presets_for((8, 8))


def test_digits_train_with_the_demo_preset_learns(tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "digits", "train", "--model", "cnn",
         "--dataset", "mnist", "--preset", "demo", "--train-size", str(N_TRAIN),
         "--name", "demo-small", "--json"],
        cwd=REPO,
        env={**os.environ, store.RUNS_DIR_ENV: str(runs)},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["epochs"] == 2 and out["n_train"] == N_TRAIN
    assert out["params"]["conv_channels"] == [16, 32]
    # Well above chance on images it never saw, with the few thousand it learned
    # from: the validation images (held out of training) and the test set.
    assert out["val_accuracy"] > 8 * CHANCE
    assert out["test_accuracy"] > 8 * CHANCE
    meta = json.loads((Path(out["run"]) / "metadata.json").read_text())
    assert meta["preset"] == "demo" and meta["train_seconds"] > 0
