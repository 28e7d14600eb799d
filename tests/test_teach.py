"""One step of backprop on one drawing, and fine-tuning a copy of a model on saved
drawings (digits.teach), on the real MNIST files and the shipped models.

The "drawings" are made from MNIST's validation images (the last 5,000 training
images, which fine-tuning never replays), mirrored left to right: a consistent
style of one writer that the shipped models mostly misread, as a learner's own
handwriting can be.
"""

from __future__ import annotations

import numpy as np
import pytest

from digits import data, handwriting, store, teach
from digits.errors import ConfigError
from digits.nn import gradcheck
from digits.nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from digits.nn.losses import softmax, softmax_cross_entropy
from digits.nn.model import Sequential

MODELS = ["default-cnn", "default-mlp"]
N_DRAWINGS = 60


@pytest.fixture(scope="module")
def models():
    return {name: store.load_model(name) for name in MODELS}


def weights(model) -> list[np.ndarray]:
    return [p.copy() for _, p, _ in teach.network_of(model).parameters()]


def unchanged(model, before: list[np.ndarray]) -> bool:
    now = [p for _, p, _ in teach.network_of(model).parameters()]
    return all(np.array_equal(a, b) for a, b in zip(before, now, strict=True))


@pytest.fixture(scope="module")
def drawings(mnist):
    """60 mirrored validation digits: (images (n, 28, 28) uint8, labels, ids)."""
    val = data.validation_split(mnist).validation
    pick = np.random.default_rng(0).choice(val, N_DRAWINGS, replace=False)
    images = np.ascontiguousarray(mnist.x_train[pick][:, :, ::-1])
    return images, mnist.y_train[pick], np.arange(100, 100 + N_DRAWINGS)


# -- one step ------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_one_step_lowers_that_drawings_loss_in_a_copy(mnist, models, name):
    model = models[name]
    before = weights(model)
    for i in range(5):
        image = mnist.x_test[i] / 255.0
        # The digit's own label, whose loss is already near 0: float32's
        # rounding (about 1e-7 here) is all that can move it.
        step = teach.one_step(model, image, int(mnist.y_test[i]))
        assert step.loss_after < step.loss_before + 1e-6
        # A wrong label: a large loss, which the step must lower.
        label = int(mnist.y_test[i] + 3) % 10
        step = teach.one_step(model, image, label)
        assert step.loss_before > 1
        assert step.loss_after < step.loss_before
        assert step.proba_after[label] > step.proba_before[label]
        # The loss shown is the cross-entropy of the probabilities shown.
        assert step.loss_before == pytest.approx(
            -np.log(step.proba_before[label]), rel=1e-4
        )
    assert unchanged(model, before), "the step changed the original model"
    # The stepped copy did move, and the original still predicts as before.
    assert not unchanged(step.model, before)
    assert np.allclose(
        model.predict_proba(mnist.x_test[:1]),
        teach.one_step(model, mnist.x_test[0] / 255.0, 0).proba_before,
        atol=1e-5,
    )


def test_the_scores_gradient_is_p_minus_onehot_and_maps_are_per_channel(mnist, models):
    step = teach.one_step(models["default-cnn"], mnist.x_test[0] / 255.0, 3)
    names = [g.name for g in step.gradients]
    assert names == ["conv1", "relu1", "conv2", "relu2", "relu3", "dense2"]
    shapes = {g.name: g.shape for g in step.gradients}
    assert shapes["conv1"] == (24, 24, 32) and shapes["relu2"] == (4, 4, 64)
    onehot = np.eye(10)[3]
    assert np.allclose(step.gradients[-1].values, step.proba_before - onehot, atol=1e-5)
    assert [n for n, _ in step.weight_steps] == ["conv1", "conv2", "dense1", "dense2"]
    assert all(change > 0 for _, change in step.weight_steps)


def tiny_net(rng: np.random.Generator) -> Sequential:
    layers = [
        Conv2D(1, 2, 5, rng=rng),
        MaxPool2D(),
        ReLU(),
        Flatten(),
        Dense(12 * 12 * 2, 6, rng),
        ReLU(),
        Dense(6, 10, rng),
    ]
    for layer in layers:
        gradcheck.to_float64(layer)
    net = Sequential(layers)
    # Biases off zero, so that ReLUs are not sitting on their kink.
    for _, p, _ in net.parameters():
        if p.ndim == 1:
            p[...] = rng.uniform(0.05, 0.2, p.shape)
    return net


def test_the_gradient_arriving_at_each_layer_matches_finite_differences(mnist):
    rng = np.random.default_rng(0)
    net = tiny_net(rng)
    x = (mnist.x_test[:1] / 255.0)[..., None]  # (1, 28, 28, 1) float64
    # A little noise on the blank background: equal pixels tie in max pooling,
    # where a finite difference only sees half of the gradient.
    x = x + rng.uniform(0, 0.05, x.shape)
    y = np.array([4])
    _, _, arriving = teach.backprop(net, x, y)
    outputs = []
    a = x
    for layer in net.layers:
        a = layer.forward(a)
        outputs.append(a.copy())
    for i, out in enumerate(outputs):
        rest = Sequential(net.layers[i + 1 :])

        def loss_from(v, rest=rest):
            return softmax_cross_entropy(rest.forward(v), y)[0]

        # A sample of coordinates of a large output; all of a small one.
        flat = out.reshape(-1)
        coords = rng.choice(flat.size, min(flat.size, 40), replace=False)
        numeric = []
        for j in coords:
            old = flat[j]
            flat[j] = old + gradcheck.EPS
            up = loss_from(out)
            flat[j] = old - gradcheck.EPS
            down = loss_from(out)
            flat[j] = old
            numeric.append((up - down) / (2 * gradcheck.EPS))
        analytic = arriving[i].reshape(-1)[coords]
        error = gradcheck.relative_error(analytic, np.array(numeric))
        assert error < 1e-5, f"layer {i} ({type(net.layers[i]).__name__}): {error}"


def test_the_mlps_layers_are_the_mlp(mnist, models):
    mlp = models["default-mlp"]
    net = teach.network_of(mlp)
    x = teach.network_input(mlp, mnist.x_test[:50])
    assert np.allclose(
        softmax(net.forward(x).astype(np.float64)),
        mlp.predict_proba(mnist.x_test[:50]),
        atol=1e-5,
    )
    # Shared, not copied: training these layers trains the MLP.
    assert np.shares_memory(net.layers[0].params["W"], mlp.model_.coefs_[0])
    twin = teach.copy_model(mlp)
    assert not np.shares_memory(twin.model_.coefs_[0], mlp.model_.coefs_[0])


def test_a_model_it_cannot_teach_says_why():
    reason = teach.unsupported(object())
    assert reason and "object" in reason
    with pytest.raises(ConfigError, match="cannot be taught"):
        teach.copy_model(object())


# -- teach it my handwriting ----------------------------------------------------------


def test_the_split_is_fixed_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 5)  # 5 of each digit
    learned, held = teach.split_drawings(labels)
    assert np.intersect1d(learned, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([learned, held])), np.arange(50))
    assert len(held) == 15
    counts = np.bincount(labels[held], minlength=10)
    assert counts.min() >= 1 and counts.max() <= 2  # stratified: 1-2 of each
    again = teach.split_drawings(labels)
    assert np.array_equal(learned, again[0]) and np.array_equal(held, again[1])
    # Too few for stratifying (a digit drawn once): still every digit learned.
    odd = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 7, 7, 7])
    learned, held = teach.split_drawings(odd)
    assert set(odd[learned]) == set(odd) and np.intersect1d(learned, held).size == 0


def test_too_few_drawings_say_how_many_are_needed():
    with pytest.raises(ConfigError) as err:
        teach.split_drawings(np.arange(7) % 10)
    message = str(err.value)
    assert f"at least {teach.MIN_DRAWINGS}" in message and "you have 7" in message
    assert f"save {teach.MIN_DRAWINGS - 7} more" in message


@pytest.mark.parametrize("name", MODELS)
def test_fine_tuning_learns_the_style_and_keeps_mnist(mnist, models, drawings, name):
    model = models[name]
    before = weights(model)
    images, labels, ids = drawings
    taught = teach.fine_tune(model, images, labels, ids, mnist, test_images=2000)
    assert unchanged(model, before), "fine-tuning changed the original model"
    assert taught.held_before < 0.8  # the style is one it misreads
    assert taught.held_after > taught.held_before
    assert taught.test_after >= taught.test_before - 0.01
    assert taught.losses[-1] < taught.losses[0]
    # The scores are the copy's own, on the images said.
    right = taught.model.predict(mnist.x_test[:2000]) == mnist.y_test[:2000]
    assert taught.test_after == pytest.approx(right.mean())
    held = np.isin(ids, taught.held_out)
    assert taught.held_before == pytest.approx(
        (model.predict(images[held]) == labels[held]).mean()
    )


def test_fine_tuning_never_learns_from_held_out_validation_or_test(
    mnist, models, drawings, monkeypatch
):
    images, labels, ids = drawings
    seen = []
    run_epoch = teach.Trainer.run_epoch

    def spy(self, x, y, *args, **kwargs):
        seen.append(x.copy())
        return run_epoch(self, x, y, *args, **kwargs)

    monkeypatch.setattr(teach.Trainer, "run_epoch", spy)
    mlp = models["default-mlp"]
    taught = teach.fine_tune(mlp, images, labels, ids, mnist, test_images=100)
    assert len(seen) == teach.FINE_TUNE_EPOCHS
    assert np.intersect1d(taught.learned, taught.held_out).size == 0
    assert sorted(np.concatenate([taught.learned, taught.held_out])) == list(ids)
    held = teach.network_input(mlp, images[np.isin(ids, taught.held_out)])
    learned = teach.network_input(mlp, images[np.isin(ids, taught.learned)])
    split = data.validation_split(mnist)
    assert np.isin(taught.replay, split.train).all()
    for x in seen:
        rows = {r.tobytes() for r in x}
        assert not any(r.tobytes() in rows for r in held)
        assert all(r.tobytes() in rows for r in learned)
        replay = max(teach.REPLAY_MIN, teach.REPLAY_PER_DRAWING * len(learned))
        assert len(x) == len(learned) + replay
    # Every row trained on is a learned drawing or a replayed training image.
    allowed = {r.tobytes() for r in learned} | {
        r.tobytes() for r in teach.network_input(mlp, mnist.x_train[taught.replay])
    }
    assert all(r.tobytes() in allowed for x in seen for r in x)


def test_the_taught_copy_saves_as_a_new_run(
    mnist, models, drawings, tmp_path, monkeypatch
):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    images, labels, ids = drawings
    run = store.open_run("default-mlp")
    taught = teach.fine_tune(models["default-mlp"], images, labels, ids, mnist)
    saved = teach.save_taught(taught, run, mnist, name="my ../hand writing")
    assert saved.name == "my-.-hand-writing"  # sanitised: no path, no ".."
    again = teach.save_taught(taught, run, mnist, name="my ../hand writing")
    assert again.name == "my-.-hand-writing-2"  # a new run, never overwritten
    names = {r.name for r in store.list_runs()[0] if not r.pretrained}
    assert names == {saved.name, again.name}
    loaded = store.load_model(saved)
    assert np.allclose(
        loaded.predict_proba(mnist.x_test[:200]), taught.test_proba[:200], atol=1e-6
    )
    assert saved.test_accuracy == pytest.approx(taught.test_after)
    assert "saved drawings" in saved.meta["command"]


def test_a_taught_run_is_scored_only_on_drawings_it_never_learned_from(
    mnist, models, drawings, tmp_path, monkeypatch
):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    hw = handwriting.HandwritingStore(tmp_path / "handwriting.sqlite")
    images, labels, _ = drawings
    for image, label in zip(images, labels, strict=True):
        hw.add(image, int(label))
    saved = hw.load()
    mlp, base = models["default-mlp"], store.open_run("default-mlp")
    # A run never taught on drawings is scored on all of them.
    assert teach.taught_on(base) == []
    unseen, left_out = teach.unseen_drawings(saved, base)
    assert left_out == 0 and unseen.ids.tolist() == saved.ids.tolist()

    taught = teach.fine_tune(
        mlp, saved.images, saved.labels, saved.ids, mnist, test_images=100
    )
    run = teach.save_taught(taught, base, mnist)
    assert run.meta["taught_on"] == sorted(taught.learned.tolist())
    assert store.open_run(run.name).meta["taught_on"] == run.meta["taught_on"]
    hw.add(mnist.x_test[0], int(mnist.y_test[0]))  # drawn after it was taught
    now = hw.load()
    unseen, left_out = teach.unseen_drawings(now, run)
    assert left_out == len(taught.learned)
    assert unseen.ids.tolist() == [*taught.held_out.tolist(), int(now.ids[-1])]
    keep = np.isin(now.ids, unseen.ids)
    np.testing.assert_array_equal(unseen.images, now.images[keep])
    np.testing.assert_array_equal(unseen.labels, now.labels[keep])
    assert unseen.sources == tuple(np.array(now.sources)[keep])
    assert not np.isin(unseen.ids, taught.learned).any()

    # A run saved before the taught_on field: the ids are read from its command.
    older = store.Run(run.path, {k: v for k, v in run.meta.items() if k != "taught_on"})
    assert teach.taught_on(older) == run.meta["taught_on"]

    # Taught again (on drawings that split differently), it has learned from both.
    later = saved.ids[20:]
    again = teach.fine_tune(
        taught.model,
        saved.images[20:],
        saved.labels[20:],
        later,
        mnist,
        test_images=100,
    )
    twice = teach.save_taught(again, run, mnist)
    both = set(taught.learned.tolist()) | set(again.learned.tolist())
    assert teach.taught_on(twice) == sorted(both)
    assert len(both) > len(taught.learned)
    unseen, left_out = teach.unseen_drawings(now, twice)
    assert left_out == len(both)
    assert set(unseen.ids.tolist()) == set(now.ids.tolist()) - both


def test_drawings_a_taught_model_learned_from_are_never_held_out_again(
    mnist, models, drawings
):
    images, labels, ids = drawings
    mlp = models["default-mlp"]
    first = teach.fine_tune(mlp, images, labels, ids, mnist, test_images=100)
    again = teach.fine_tune(
        first.model,
        images,
        labels,
        ids,
        mnist,
        test_images=100,
        already_learned=first.learned,
    )
    # Held out again only from the drawings the first copy never learned from.
    assert np.intersect1d(again.held_out, first.learned).size == 0
    assert np.isin(first.learned, again.learned).all()
    assert sorted(np.concatenate([again.learned, again.held_out])) == list(ids)
    assert 0 < len(again.held_out) < len(first.held_out)
