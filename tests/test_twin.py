"""The second half of each batch in a second process (digits/engine/twin.py)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from digits.engine.flat import pack
from digits.engine.trainer import Trainer
from digits.engine.twin import TwinFailed, remove_orphans
from digits.estimator import CNNClassifier
from digits.nn.callbacks import Callback


def _twin_files() -> set[str]:
    return set(glob.glob("/dev/shm/digits-twin-*"))


@pytest.mark.parametrize(
    "settings",
    [{}, {"augment": True}, {"solver": "sgd", "momentum": 0.9, "alpha": 1e-3}],
    ids=["adam", "adam-augment", "sgd-momentum"],
)
def test_process_and_thread_give_the_same_weights(mnist, monkeypatch, settings):
    """Bit for bit, and the optimizer's state too: the twin process runs half of
    each optimizer step in shared memory, and hands the state back at the end."""
    # 2,000 images: the last batch of each epoch has 16, too few to split, so the
    # parent alone runs it and updates every weight.
    x, y = mnist.x_train[:2000], mnist.y_train[:2000]
    weights, states = {}, {}
    for mode in ("thread", "process"):
        monkeypatch.setenv("DIGITS_TWIN", mode)
        est = CNNClassifier(max_iter=2, random_state=3, **settings)
        est.fit(x, y)
        weights[mode] = est.model_.state_dict()
        states[mode] = est.optimizer_.state()
        assert all(type(a) is np.ndarray for a in states[mode].values())
        assert est.optimizer_.params[0] is pack(est.model_).params
    for key, w in weights["thread"].items():
        np.testing.assert_array_equal(w, weights["process"][key], err_msg=key)
    assert states["thread"].keys() == states["process"].keys()
    for key, a in states["thread"].items():
        np.testing.assert_array_equal(a, states["process"][key], err_msg=key)


def small_trainer(mnist) -> tuple[Trainer, np.ndarray, np.ndarray]:
    x, y = mnist.x_train[:640], mnist.y_train[:640]
    est = CNNClassifier(max_iter=1, random_state=0).fit(x[:64], y[:64])
    trainer = Trainer(
        est.model_,
        est.optimizer_,
        batch_size=64,
        alpha=est.alpha,
        prepare=est._preparer(),
        rng=np.random.default_rng(0),
        twin="process",
    )
    return trainer, x.reshape(len(x), -1), y.astype(np.int64)


class KillTwin(Callback):
    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.trainer = trainer

    def on_batch_end(self, step: int, logs: dict) -> None:
        if step == 2:
            os.kill(self.trainer._twin._process.pid, signal.SIGKILL)


def test_a_killed_twin_is_a_clear_error_not_a_hang(mnist):
    before = _twin_files()
    trainer, x, y = small_trainer(mnist)
    try:
        with pytest.raises(TwinFailed, match="second training process stopped"):
            trainer.run_epoch(x, y, 0, [KillTwin(trainer)])
    finally:
        trainer.close()
    assert _twin_files() <= before  # the shared files were unlinked at the start


def test_a_twin_killed_during_the_update_is_a_clear_error(mnist, monkeypatch):
    """Kill the twin as the parent reaches the optimizer step of the third batch:
    the twin may be in its half, taking blocks, or done. Whatever it had not
    finished is never done, and the parent must say so rather than wait for it."""
    from digits.engine import twin as twin_module

    trainer, x, y = small_trainer(mnist)
    killed = []
    update = twin_module._Side.update

    def kill_on_third_step(self, *args):
        if self.side == twin_module.PARENT and self.step == 3 and not killed:
            killed.append(trainer._twin._process.pid)
            os.kill(killed[0], signal.SIGKILL)
        return update(self, *args)

    monkeypatch.setattr(twin_module._Side, "update", kill_on_third_step)
    try:
        with pytest.raises(TwinFailed, match="second training process stopped"):
            trainer.run_epoch(x, y, 0)
    finally:
        trainer.close()
    assert killed


def test_close_ends_the_twin_and_a_new_epoch_starts_another(mnist):
    trainer, x, y = small_trainer(mnist)
    try:
        trainer.run_epoch(x, y, 0)
        first = trainer._twin._process
        trainer.close()
        assert first.poll() is not None  # exited
        logs = trainer.run_epoch(x, y, 1)
        assert logs["batches_done"] == 10
        assert trainer._twin._process is not first
    finally:
        trainer.close()


def test_a_script_without_a_main_guard_trains_once(tmp_path, mnist):
    """The twin must not re-run the parent's script, as multiprocessing's spawn does."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            from digits.data import load_dataset
            from digits.estimator import CNNClassifier
            d = load_dataset("mnist")
            print("training", flush=True)
            est = CNNClassifier(max_iter=1, random_state=0)
            est.fit(d.x_train[:640], d.y_train[:640])
            print("done", flush=True)
            """
        )
    )
    env = dict(os.environ, DIGITS_TWIN="process")
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["training", "done"]


def test_unknown_twin_mode_is_refused(mnist):
    est = CNNClassifier(max_iter=1, random_state=0)
    est.fit(mnist.x_train[:64], mnist.y_train[:64])
    with pytest.raises(ValueError, match="twin must be"):
        Trainer(
            est.model_,
            est.optimizer_,
            batch_size=64,
            alpha=0.0,
            prepare=est._preparer(),
            rng=np.random.default_rng(0),
            twin="fork",
        )


def test_a_twin_that_cannot_start_falls_back_to_the_thread(mnist, monkeypatch):
    """Same weights either way, so training goes on, with a warning that says why."""
    import digits.engine.trainer as training

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    x, y = mnist.x_train[:640], mnist.y_train[:640]
    monkeypatch.setenv("DIGITS_TWIN", "thread")
    expected = CNNClassifier(max_iter=1, random_state=0).fit(x, y)
    monkeypatch.setenv("DIGITS_TWIN", "process")
    monkeypatch.setattr(training, "TwinProcess", broken)
    with pytest.warns(RuntimeWarning, match="in a thread: .*No space left"):
        est = CNNClassifier(max_iter=1, random_state=0).fit(x, y)
    for key, w in expected.model_.state_dict().items():
        np.testing.assert_array_equal(w, est.model_.state_dict()[key], err_msg=key)


def test_remove_orphans_deletes_only_old_files_of_dead_creators(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, alive = proc.pid, os.getpid()
    names = {
        "dead_old": f"digits-twin-{dead}-aaaa",
        "dead_young": f"digits-twin-{dead}-bbbb",
        "alive_old": f"digits-twin-{alive}-cccc",
        "no_pid": "digits-twin-dddd",
        "other": f"other-{dead}-eeee",
    }
    for key, name in names.items():
        path = tmp_path / name
        path.write_bytes(b"x")
        if key != "dead_young":
            os.utime(path, (time.time() - 3600, time.time() - 3600))
    removed = remove_orphans(str(tmp_path))
    assert removed == [str(tmp_path / names["dead_old"])]
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(names.values()) - {names["dead_old"]}


def test_a_new_twin_removes_the_files_a_killed_parent_left(tmp_path, mnist):
    """Kill a training script and its twin while the twin starts, as a crash or
    Ctrl-C of a terminal would; the next twin to start deletes what they left."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            from digits.data import load_dataset
            from digits.estimator import CNNClassifier
            d = load_dataset("mnist")
            CNNClassifier(max_iter=1).fit(d.x_train[:640], d.y_train[:640])
            """
        )
    )
    env = dict(os.environ, DIGITS_TWIN="process")
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, start_new_session=True
    )
    pattern = f"/dev/shm/digits-twin-{proc.pid}-*"
    deadline = time.monotonic() + 120
    while (
        not glob.glob(pattern) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = glob.glob(pattern)
    for path in left:  # as if the start-up limit had passed
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    trainer, x, y = small_trainer(mnist)
    try:
        trainer.run_epoch(x, y, 0)
    finally:
        trainer.close()
    print(f"left by the killed start: {len(left)} files")
    assert left, "the twin mapped the files before the kill; nothing to clean up"
    assert glob.glob(pattern) == []


def test_divergence_and_a_stop_keep_the_same_weights_on_both_paths(mnist, monkeypatch):
    """A diverging run (its loss explodes at batch 5, which both processes see and
    skip the update for) restores the weights from the backup that both processes
    wrote; a callback's stop leaves the last batch's weights. Either way the model
    ends on its own arrays again, with what the thread path gives."""
    from digits.errors import TrainingDiverged

    x, y = mnist.x_train[:2000], mnist.y_train[:2000]
    diverging = dict(solver="sgd", momentum=0.9, learning_rate_init=1.0)
    results = {}
    for mode in ("thread", "process"):
        monkeypatch.setenv("DIGITS_TWIN", mode)
        est = CNNClassifier(max_iter=3, random_state=0, **diverging)
        with pytest.raises(
            TrainingDiverged, match=r"epoch 1, batch 5: the loss exploded"
        ) as caught:
            est.fit(x, y)
        assert caught.value.usable and "from before batch 4 of epoch 1" in str(
            caught.value
        )
        stopped = CNNClassifier(max_iter=3, random_state=0)
        stopped.fit(x, y, callbacks=[StopAt(5)])
        assert stopped.n_iter_ == 1
        results[mode] = [est.model_.state_dict(), stopped.model_.state_dict()]
        for model in (est.model_, stopped.model_):
            assert type(pack(model).params) is np.ndarray
            assert not isinstance(pack(model).params.base, np.memmap)
    for kept_thread, kept_process in zip(*results.values(), strict=True):
        for key, w in kept_thread.items():
            assert np.isfinite(w).all()
            np.testing.assert_array_equal(w, kept_process[key], err_msg=key)


class StopAt(Callback):
    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches

    def on_batch_end(self, step: int, logs: dict) -> None:
        self.stop_training = step + 1 >= self.batches


def test_auto_uses_the_process_only_where_batches_are_heavy_enough():
    """The default CNN's batches (260 M multiply-adds) hide the hand-over to the
    process; the quick CNN's (21 M) do not, and train faster on a thread."""
    from digits import registry
    from digits.engine.trainer import multiply_adds, process_pays_off

    sample = np.zeros((28, 28, 1), np.float32)
    x, y = np.zeros((10, 28, 28), np.uint8), np.arange(10)
    built = {}
    for preset in ("quick", "default"):
        est = registry.get("cnn").build(preset, max_iter=1).fit(x, y)
        built[preset] = est.model_
    # conv 5x5x32 at 24x24, conv 5x5x32x64 at 8x8, dense 1024x128 and 128x10
    assert multiply_adds(built["default"], sample.shape) == (
        24 * 24 * 25 * 32 + 8 * 8 * 25 * 32 * 64 + 1024 * 128 + 128 * 10
    )
    assert process_pays_off(built["default"], sample, 64, 10_000)
    assert not process_pays_off(built["default"], sample, 64, 9_999)
    assert not process_pays_off(built["quick"], sample, 64, 60_000)
