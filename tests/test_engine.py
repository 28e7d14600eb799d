"""The engine (digits.engine): flat buffers, the two halves, and the proof that it
trains the weights that the lesson's plain loop (digits.nn.training) trains.

What "the same weights" means here, for 50 steps of a CNN with dropout, augmentation
and L2, for SGD with momentum and for Adam:

- the engine with each batch whole (``n_threads=1``) gives the plain loop's weights
  bit for bit: it draws the same random numbers and does the same float32
  operations in the same order, on flat arrays instead of one array per parameter;
- with each batch in two halves, the thread path and the process path give each
  other's weights and optimizer state bit for bit;
- the halves against the plain loop agree within 1e-9 relative in float64, where
  rounding is 1e-16: the halves' gradients are two sums added together, where the
  plain loop's GEMMs sum the whole batch at once, so float32 rounds them
  differently (by about 1e-7 per step), and training amplifies such differences
  over the steps (in float32, measured 2e-4 relative after 50 steps of Adam and 3e-2
  of SGD with momentum). Both reach the same accuracy (benchmarks/README.md).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from digits.augment import network_input
from digits.engine import trainer as engine
from digits.engine.flat import flat_ranges, pack, update_blocks
from digits.engine.halves import replica
from digits.errors import ConfigError
from digits.estimator import CNNClassifier
from digits.nn.gradcheck import to_float64
from digits.nn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from digits.nn.model import Sequential
from digits.nn.optimizers import SGD, Adam
from digits.nn.training import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 49 batches of 64 (halves of 32) and a last one of 20, too few to split: 50 steps.
N_IMAGES = 64 * 49 + 20


def small_cnn(seed: int) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential(
        [
            Conv2D(1, 8, 5, rng=rng),
            MaxPool2D(),
            ReLU(),
            Conv2D(8, 16, 5, rng=rng),
            MaxPool2D(),
            ReLU(),
            Flatten(),
            Dense(256, 32, rng),
            ReLU(),
            Dropout(0.3, seed=seed),
            Dense(32, 10, rng),
        ]
    )


def train(
    mnist,
    loop: str,
    solver: str,
    *,
    twin: str = "thread",
    n_threads: int = 2,
    dtype=np.float32,
) -> tuple[Sequential, object]:
    """One epoch of 50 steps on real MNIST, augmented, with dropout and L2."""
    x = mnist.x_train[:N_IMAGES].reshape(N_IMAGES, -1)
    y = mnist.y_train[:N_IMAGES].astype(np.int64)
    model = small_cnn(seed=5)
    if dtype == np.float64:
        for layer in model.layers:
            to_float64(layer)
    if loop == "plain":
        params = [p for _, p, _ in model.parameters()]
        grads = [g for _, _, g in model.parameters()]
    else:
        flat = pack(model)
        params, grads = [flat.params], [flat.grads]
    if solver == "adam":
        optimizer = Adam(params, grads, lr=2e-3)
    else:
        optimizer = SGD(params, grads, lr=0.05, momentum=0.9, nesterov=True)

    def prepare(xb, rng):
        return network_input(xb, rng, input_shape=(28, 28), images=True).astype(dtype)

    settings = dict(
        batch_size=64,
        alpha=1e-2,
        prepare=prepare,
        rng=np.random.default_rng(1),
        augment=True,
    )
    if loop == "plain":
        trainer = Trainer(model, optimizer, **settings)
    else:
        trainer = engine.Trainer(
            model, optimizer, n_threads=n_threads, twin=twin, **settings
        )
    try:
        assert trainer.run_epoch(x, y, 0)["batches_done"] == 50
    finally:
        if loop != "plain":
            trainer.close()
    return model, optimizer


def weights(model: Sequential) -> np.ndarray:
    return np.concatenate([p.ravel() for _, p, _ in model.parameters()])


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_the_engine_with_whole_batches_gives_the_plain_loops_weights_bit_for_bit(
    mnist, solver
):
    plain, plain_opt = train(mnist, "plain", solver)
    fast, fast_opt = train(mnist, "engine", solver, n_threads=1)
    for (key, p, _), (_, q, _) in zip(
        plain.parameters(), fast.parameters(), strict=True
    ):
        np.testing.assert_array_equal(p, q, err_msg=key)
    # The optimizer's state too: one array per parameter against one flat array,
    # laid out as the flat parameters are.
    flat = pack(fast)
    for name, arrays in plain_opt.state_arrays().items():
        state = fast_opt.state_arrays()[name][0]
        for (key, _, _), (_, p, _), a in zip(
            plain.parameters(), fast.parameters(), arrays, strict=True
        ):
            start = (_address(p) - _address(flat.params)) // p.itemsize
            view = state[start : start + p.size].reshape(p.shape)
            np.testing.assert_array_equal(a, view, err_msg=f"{name} of {key}")
    assert plain_opt.t == fast_opt.t == 50


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_thread_and_process_give_the_same_weights_bit_for_bit(mnist, solver):
    thread, thread_opt = train(mnist, "engine", solver, twin="thread")
    process, process_opt = train(mnist, "engine", solver, twin="process")
    np.testing.assert_array_equal(weights(thread), weights(process))
    for key, a in thread_opt.state().items():
        np.testing.assert_array_equal(a, process_opt.state()[key], err_msg=key)
    assert not np.array_equal(weights(thread), weights(small_cnn(seed=5)))


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("twin", ["thread", "process"])
def test_the_halves_give_the_plain_loops_weights_within_rounding(mnist, solver, twin):
    """In float64: only the order of the sums differs (see the module docstring)."""
    plain, _ = train(mnist, "plain", solver, dtype=np.float64)
    fast, _ = train(mnist, "engine", solver, twin=twin, dtype=np.float64)
    a, b = weights(plain), weights(fast)
    assert a.dtype == b.dtype == np.float64
    assert np.linalg.norm(a - b) <= 1e-9 * np.linalg.norm(a)
    for (key, p, _), (_, q, _) in zip(
        plain.parameters(), fast.parameters(), strict=True
    ):
        np.testing.assert_allclose(q, p, rtol=1e-6, atol=1e-9, err_msg=key)
    assert not np.array_equal(a, weights(small_cnn(seed=5)))


def tiny_model(rng):
    return Sequential(
        [Conv2D(1, 3, 3, rng=rng), MaxPool2D(), ReLU(), Flatten(), Dense(27, 4, rng)]
    )


def test_pack_moves_parameters_into_one_array_weights_first():
    rng = np.random.default_rng(0)
    model = tiny_model(rng)
    before = {k: p.copy() for k, p in model.state_dict().items()}
    flat = pack(model)
    assert pack(model) is flat  # packing twice changes nothing
    assert flat.params.shape == flat.grads.shape == (model.n_params(),)
    assert flat.n_weights == 3 * 3 * 3 + 27 * 4
    for key, p in model.state_dict().items():
        np.testing.assert_array_equal(p, before[key])
        assert np.shares_memory(p, flat.params)
        assert key.endswith(".W") == np.shares_memory(p, flat.params[: flat.n_weights])
    # Writing through the flat array is writing the layers' parameters, and
    # backward writes its gradients into the flat gradient array.
    flat.params[:] = 0.5
    assert (model.layers[4].params["W"] == 0.5).all()
    x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    model.backward(model.forward(x, training=True))
    assert np.count_nonzero(flat.grads) > 0
    # A replica shares the parameters but gets its own flat gradients.
    twin = replica(model)
    assert pack(twin).params is flat.params
    assert not np.shares_memory(pack(twin).grads, flat.grads)
    twin.backward(twin.forward(x, training=True))
    np.testing.assert_array_equal(pack(twin).grads, flat.grads)


def test_update_blocks_cover_every_parameter_once_last_layers_first():
    """The twin path's optimizer step goes in these blocks; each is ready once both
    halves' backward passes have finished its layer, so the order must follow
    backward's, and the blocks must cover the flat array exactly once."""
    model = tiny_model(np.random.default_rng(0))
    flat = pack(model)
    blocks = update_blocks(model, block=50)
    covered = np.zeros(len(flat.params), int)
    for _, start, stop in blocks:
        assert 0 < stop - start <= 50 or start >= flat.n_weights
        covered[start:stop] += 1
    assert (covered == 1).all()
    layers = [layer for layer, _, _ in blocks]
    assert layers == sorted(layers, reverse=True)
    # A block's layer owns its weights, or (the biases' block) comes first.
    owner = {}
    for layer, start, stop in flat_ranges(model):
        owner.update(dict.fromkeys(range(start, stop), layer))
    for layer, start, stop in blocks:
        assert min(owner[i] for i in range(start, stop)) == layer


@pytest.mark.parametrize("alpha", [0.0, 1e-2])
def test_update_split_across_two_threads_equals_one_thread(alpha):
    """Each thread updates half of the flat array: together, every element once."""
    results = []
    for threads in (1, 2):
        rng = np.random.default_rng(0)
        model = tiny_model(rng)
        flat = pack(model)
        opt = Adam([flat.params], [flat.grads], lr=0.01)
        trainer = engine.Trainer(
            model,
            opt,
            batch_size=8,
            alpha=alpha,
            prepare=lambda xb, _: xb,
            rng=np.random.default_rng(0),
        )
        other = pack(trainer.halves[1]).grads
        for step in range(3):
            flat.grads[:] = np.random.default_rng(step).standard_normal(len(other))
            other[:] = np.random.default_rng(step + 10).standard_normal(len(other))
            opt.t += 1
            with ThreadPoolExecutor(1) as pool:
                trainer._pool = pool
                assert trainer._step(8, [other], threads == 2, None)
        results.append(flat.params.copy())
    np.testing.assert_array_equal(results[0], results[1])
    initial = pack(tiny_model(np.random.default_rng(0))).params
    assert not np.array_equal(results[0], initial)


def test_the_trainer_refuses_an_optimizer_on_other_arrays():
    model = tiny_model(np.random.default_rng(0))
    params = [p for _, p, _ in model.parameters()]
    grads = [g for _, _, g in model.parameters()]
    with pytest.raises(ValueError, match=r"pack\(model\)"):
        engine.Trainer(
            model,
            Adam(params, grads),
            batch_size=8,
            alpha=0.0,
            prepare=lambda xb, _: xb,
            rng=np.random.default_rng(0),
        )


SMALL = {"conv_channels": (4,), "hidden_layer_sizes": (16,), "kernel_size": 3}


def test_digits_engine_plain_trains_with_the_lesson_and_gives_the_same_model(
    mnist, monkeypatch
):
    """DIGITS_ENGINE=plain, or trainer="plain", trains with the lesson's loop; the
    engine with one thread gives the same weights; a bad value is refused."""
    x, y = mnist.x_train[:600], mnist.y_train[:600]
    settings = dict(SMALL, max_iter=2, random_state=0, augment=True, alpha=1e-3)
    monkeypatch.setenv("DIGITS_ENGINE", "plain")
    by_variable = CNNClassifier(**settings).fit(x, y)
    monkeypatch.delenv("DIGITS_ENGINE")
    by_option = CNNClassifier(**settings, trainer="plain").fit(x, y)
    by_engine = CNNClassifier(**settings, n_threads=1).fit(x, y)
    assert not by_variable._on_engine and not by_option._on_engine
    assert by_engine._on_engine
    for key, w in by_variable.model_.state_dict().items():
        np.testing.assert_array_equal(w, by_option.model_.state_dict()[key])
        np.testing.assert_array_equal(w, by_engine.model_.state_dict()[key])
    np.testing.assert_array_equal(
        by_variable.predict_proba(mnist.x_test[:300]),
        by_engine.predict_proba(mnist.x_test[:300]),
    )
    # partial_fit keeps the loop it started with.
    monkeypatch.setenv("DIGITS_ENGINE", "engine")
    by_option.partial_fit(x, y)
    assert not by_option._on_engine and by_option.n_iter_ == 3
    monkeypatch.setenv("DIGITS_ENGINE", "fast")
    with pytest.raises(ConfigError, match="DIGITS_ENGINE must be 'engine' or 'plain'"):
        CNNClassifier(**settings).fit(x, y)
    with pytest.raises(ConfigError, match="trainer must be one of"):
        CNNClassifier(**settings, trainer="turbo").fit(x, y)


def _imports(path: pathlib.Path) -> set[str]:
    """The digits modules ``path`` imports, anywhere in it (functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("digits.")}


def test_no_import_loop_through_the_lesson_or_the_engine():
    """digits.nn imports no engine module, and no chain of imports (those inside
    functions included) leads from an engine module back to itself."""
    modules = {}
    for package in ("nn", "engine"):
        for path in (ROOT / "digits" / package).glob("*.py"):
            name = f"digits.{package}" + (
                "" if path.stem == "__init__" else f".{path.stem}"
            )
            modules[name] = _imports(path)
    for name, imported in modules.items():
        if name.startswith("digits.nn"):
            assert not [m for m in imported if m.startswith("digits.engine")], name

    def reaches(start: str, seen: set[str]) -> set[str]:
        for nxt in modules.get(start, set()) & modules.keys():
            if nxt not in seen:
                seen.add(nxt)
                reaches(nxt, seen)
        return seen

    for name in modules:
        assert name not in reaches(name, set()), f"{name} imports itself in a loop"


def test_every_engine_module_imports_first_in_a_fresh_interpreter():
    for path in sorted((ROOT / "digits" / "engine").glob("*.py")):
        module = "digits.engine" + ("" if path.stem == "__init__" else f".{path.stem}")
        out = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, (module, out.stderr)
